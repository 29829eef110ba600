"""Stateful property test: random sequences of pushes, promotions, guarded promotions, moves,
releases, roll-backs of any earlier promotion, hygiene runs with random rules, copies into another
account and concurrent external tag moves, against the double.

Invariants after every step:
- with ``allow_image_deletion=False`` the set of images only grows;
- protected tags never change except through a promotion that targets them, or the roll-back
  of one;
- every operator's report matches the double's real state;
- a roll-back puts every recorded tag back at exactly its recorded previous digest (or removes
  an added one), or reports why not, and changes no other tag;
- a copy leaves the source as it was, and in the other account the images only grow.
"""

from __future__ import annotations

import fnmatch
import itertools
import os
from datetime import UTC, datetime, timedelta

import pytest
from helpers import AWS, make_context
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, multiple, rule

from airflow_ecr_retag import (
    EcrCopyImageOperator,
    EcrReleaseOperator,
    EcrRetagOperator,
    EcrRollbackOperator,
    EcrTagHygieneOperator,
)
from airflow_ecr_retag.exceptions import EcrRetagError, GuardFailedError
from airflow_ecr_retag.testing import EcrDouble, build_image

REPO = "team/app"
PROTECT = ["v*", "prod"]
PROTECTED_TAGS = ["prod", "v1", "v2"]
FREE_TAGS = ["sha-1", "sha-2", "sha-3", "latest", "pr-1", "pr-2", "rc"]
ALL_TAGS = PROTECTED_TAGS + FREE_TAGS
PATTERNS = ["sha-*", "latest", "pr-*", "*", "rc", "v*"]
START = datetime(2026, 6, 1, tzinfo=UTC)
#: The account copies go to (the same Region: one client serves both sides).
PROD = "210987654321"

rule_strategy = st.fixed_dictionaries(
    {"tag_pattern": st.sampled_from(PATTERNS)},
    optional={"keep_latest": st.integers(0, 3), "older_than_days": st.integers(0, 30)},
)


class RegistryMachine(RuleBasedStateMachine):
    images = Bundle("images")
    promotions = Bundle("promotions")

    def __init__(self) -> None:
        super().__init__()
        self.ecr = EcrDouble()
        self.ecr.__enter__()
        self.ecr.create_repository(REPO)
        self.ecr.create_repository(REPO, registry_id=PROD)
        self.names = itertools.count()
        self.known_images: set[str] = set()
        self.known_in_prod: set[str] = set()
        self.protected = {}

    def teardown(self) -> None:
        self.ecr.__exit__(None, None, None)

    # ------------------------------------------------------------ helpers
    def _snapshot_protected(self) -> dict[str, str]:
        return {t: d for t, d in self.ecr.tags(REPO).items() if any(fnmatch.fnmatchcase(t, p) for p in PROTECT)}

    def _after(self, targeted: set[str] = frozenset()) -> None:
        now = self._snapshot_protected()
        for tag in set(now) | set(self.protected):
            if tag not in targeted:
                assert now.get(tag) == self.protected.get(tag), f"protected tag {tag} changed"
        self.protected = now
        self.known_images |= set(self.ecr.images(REPO))

    # ------------------------------------------------------------ rules
    @initialize(target=images, tags=st.lists(st.sampled_from(FREE_TAGS), max_size=2, unique=True))
    def first_image(self, tags):
        return self._push(tags, 0)

    @rule(target=images, tags=st.lists(st.sampled_from(FREE_TAGS), max_size=2, unique=True), age=st.integers(0, 40))
    def push_image(self, tags, age):
        return self._push(tags, age)

    def _push(self, tags, age):
        digest = self.ecr.push(
            REPO, build_image("oci", f"img{next(self.names)}"), tags, pushed_at=START - timedelta(days=age)
        )
        self._after()
        return digest

    @rule(
        target=promotions,
        digest=images,
        target_list=st.lists(st.sampled_from(ALL_TAGS), min_size=1, max_size=3, unique=True),
    )
    def promote(self, digest, target_list):
        targets = target_list
        context = make_context()
        returned = EcrRetagOperator(
            task_id="p", repository_name=REPO, source_digest=digest, target_tags=targets, **AWS
        ).execute(context)
        report = context["ti"].xcom["promotion"]
        tags = self.ecr.tags(REPO)
        assert returned == report["digest"] == digest
        assert all(tags[t] == digest for t in targets)
        assert sorted(report["added"] + report["unchanged"]) == sorted(targets)
        self._after(targeted=set(targets))
        return report

    @rule(
        source=st.sampled_from(FREE_TAGS),
        stale=images,
        target_list=st.lists(st.sampled_from(ALL_TAGS), min_size=1, max_size=2, unique=True),
    )
    def promote_with_guard(self, source, stale, target_list):
        targets = target_list
        tags = self.ecr.tags(REPO)
        if source not in tags or source in targets:
            return
        tested = tags[source] if stale == tags[source] or len(self.known_images) < 2 else stale
        self.ecr.reset_calls()
        operator = EcrRetagOperator(
            task_id="g", repository_name=REPO, source_tag=source, source_digest=tested, target_tags=targets, **AWS
        )
        if tested != tags[source]:
            with pytest.raises(GuardFailedError):
                operator.execute(make_context())
            assert self.ecr.write_calls == 0
            self._after()
        else:
            operator.execute(make_context())
            assert all(self.ecr.tags(REPO)[t] == tested for t in targets)
            self._after(targeted=set(targets))

    @rule(target=promotions, source=st.sampled_from(FREE_TAGS), destination=st.sampled_from(ALL_TAGS))
    def move(self, source, destination):
        target = destination
        tags = self.ecr.tags(REPO)
        if source not in tags or source == target:
            return multiple()
        digest = tags[source]
        context = make_context()
        EcrRetagOperator(
            task_id="m", repository_name=REPO, source_tag=source, target_tags=[target], remove_source_tag=True, **AWS
        ).execute(context)
        report = context["ti"].xcom["promotion"]
        now = self.ecr.tags(REPO)
        assert now[target] == digest
        assert (source not in now) == report["source_tag_removed"]
        self._after(targeted={target})
        return report

    @rule(
        target=promotions,
        digest=images,
        target_list=st.lists(st.sampled_from(ALL_TAGS), min_size=1, max_size=3, unique=True),
    )
    def release(self, digest, target_list):
        context = make_context()
        returned = EcrReleaseOperator(
            task_id="r", images=[{"repository_name": REPO, "source_digest": digest}], target_tags=target_list, **AWS
        ).execute(context)
        [report] = context["ti"].xcom["release"]
        assert returned == {REPO: digest} and report["digest"] == digest
        assert all(self.ecr.tags(REPO)[t] == digest for t in target_list)
        self._after(targeted=set(target_list))
        return report

    @rule(promotion=promotions, remove_added_tags=st.booleans())
    def roll_back(self, promotion, remove_added_tags):
        self._roll_back_and_check(promotion, remove_added_tags)

    @rule(
        digest=images,
        data=st.data(),
        meanwhile=st.one_of(st.none(), st.tuples(st.integers(0, 2), st.one_of(st.none(), images))),
        remove_added_tags=st.booleans(),
    )
    def promote_then_roll_back(self, digest, data, meanwhile, remove_added_tags):
        """A deploy fails: roll back at once, maybe after another actor moved (or removed) a target."""
        # Often tags on other images, so that the promotion moves them.
        existing = sorted(t for t, d in self.ecr.tags(REPO).items() if d != digest)
        target_list = data.draw(
            st.lists(
                st.sampled_from(existing + ALL_TAGS if existing else ALL_TAGS), min_size=1, max_size=3, unique=True
            )
        )
        promotion = self.promote(digest, target_list)
        if meanwhile:
            which, elsewhere = meanwhile
            tag = target_list[which % len(target_list)]
            tags = self.ecr.tags(REPO)
            if elsewhere is None and tag in tags and list(tags.values()).count(tags[tag]) > 1:
                self.ecr.delete_tag(REPO, tag)  # not an image's last tag: that would delete the image
            elif elsewhere is not None:
                self.ecr.move_tag(REPO, tag, elsewhere)
            self._after(targeted={tag})
        self._roll_back_and_check(promotion, remove_added_tags)

    def _roll_back_and_check(self, promotion, remove_added_tags):
        before = self.ecr.tags(REPO)
        report = EcrRollbackOperator(
            task_id="rb", promotions=promotion, remove_added_tags=remove_added_tags, **AWS
        ).execute(make_context())
        after = self.ecr.tags(REPO)
        promoted, moved = promotion["digest"], promotion["moved"]
        new = [t for t in promotion["added"] if t not in moved]
        assert report["failed"] == []  # every previous image still exists, the repository is mutable
        outcomes = {e["tag"]: (kind, e) for kind, entries in report.items() for e in entries}
        assert sorted(e["tag"] for entries in report.values() for e in entries) == sorted([*moved, *new])
        for tag, previous in moved.items():
            kind, entry = outcomes[tag]
            if kind == "restored":
                assert before[tag] == promoted and after[tag] == previous
            elif kind == "unchanged":
                assert before[tag] == after[tag] == previous
            elif entry["reason"] == "moved_since":
                assert before[tag] not in (promoted, previous) and after[tag] == before[tag] == entry["digest"]
            else:
                assert entry["reason"] == "removed_since" and tag not in before and tag not in after
        for tag in new:
            kind, entry = outcomes[tag]
            if kind == "removed":
                assert before[tag] == promoted and tag not in after
            elif kind == "unchanged":
                assert tag not in before and tag not in after
            elif entry["reason"] == "moved_since":
                assert before.get(tag) not in (None, promoted) and after[tag] == before[tag]
            elif entry["reason"] == "last_tag":
                assert after[tag] == promoted and [t for t, d in after.items() if d == promoted] == [tag]
            else:
                assert entry["reason"] == "remove_added_tags=False" and not remove_added_tags
                assert after.get(tag) == before.get(tag)
        for tag in (set(before) | set(after)) - set(outcomes):
            assert before.get(tag) == after.get(tag), f"the roll-back changed {tag}, which it did not record"
        self._after(targeted=set(outcomes))
        # Twice in a row: the second run writes nothing and changes nothing.
        self.ecr.reset_calls()
        EcrRollbackOperator(task_id="rb2", promotions=promotion, remove_added_tags=remove_added_tags, **AWS).execute(
            make_context()
        )
        assert self.ecr.write_calls == 0 and self.ecr.tags(REPO) == after

    @rule(
        rules=st.lists(rule_strategy, min_size=1, max_size=3),
        dry_run=st.booleans(),
        race=st.one_of(st.none(), st.tuples(st.sampled_from(FREE_TAGS), images)),
    )
    def hygiene(self, rules, dry_run, race):
        if race and not dry_run:
            tag, digest = race
            # Another actor moves a tag after the snapshot, before the re-check.
            self.ecr.before_call("DescribeImages", lambda d: d.move_tag(REPO, tag, digest), call=2)
        images_before = set(self.ecr.images(REPO))
        report = EcrTagHygieneOperator(
            task_id="h", repository_name=REPO, rules=rules, protect=PROTECT, dry_run=dry_run, **AWS
        ).execute(make_context())
        self.ecr.clear_faults()
        tags = self.ecr.tags(REPO)
        assert report["images_deleted"] == [] and report["failed"] == []
        assert set(self.ecr.images(REPO)) >= images_before
        if dry_run:
            assert all(r["tag"] in tags for r in report["removed"])
        else:
            for removed in report["removed"]:
                assert removed["tag"] not in tags, removed
            for kept in report["skipped_last_tag"]:
                assert tags.get(kept["tag"]) == kept["digest"], kept
        assert not {r["tag"] for r in report["removed"]} & set(PROTECTED_TAGS)
        self._after()

    @rule(digest=images, target_list=st.lists(st.sampled_from(ALL_TAGS), min_size=1, max_size=2, unique=True))
    def copy_to_another_account(self, digest, target_list):
        source_before = (self.ecr.tags(REPO), set(self.ecr.images(REPO)))
        context = make_context()
        returned = EcrCopyImageOperator(
            task_id="c",
            source_repository_name=REPO,
            source_digest=digest,
            repository_name=REPO,
            registry_id=PROD,
            target_tags=target_list,
            **AWS,
        ).execute(context)
        report = context["ti"].xcom["copy"]
        prod = self.ecr.tags(REPO, registry_id=PROD)
        assert returned == report["digest"] == digest
        assert all(prod[t] == digest for t in target_list)
        assert sorted(report["added"] + report["unchanged"]) == sorted(target_list)
        assert report["blobs_copied"] + report["blobs_present"] == report["blobs"]
        image = self.ecr.images(REPO)[digest]
        assert self.ecr.images(REPO, registry_id=PROD)[digest].manifest == image.manifest
        assert {d["digest"] for d in image.blob_descriptors} <= set(self.ecr.blobs_of(REPO, registry_id=PROD))
        assert (self.ecr.tags(REPO), set(self.ecr.images(REPO))) == source_before  # only read
        self.known_in_prod |= set(self.ecr.images(REPO, registry_id=PROD))
        self._after()

    @rule(tag=st.sampled_from(FREE_TAGS), digest=images)
    def external_move(self, tag, digest):
        if digest in self.ecr.images(REPO):
            self.ecr.move_tag(REPO, tag, digest)
        self._after()

    @invariant()
    def images_only_grow(self):
        assert self.known_images <= set(self.ecr.images(REPO))
        assert self.known_in_prod <= set(self.ecr.images(REPO, registry_id=PROD))


RegistryMachine.TestCase.settings = settings(
    max_examples=int(os.environ.get("PROPERTY_EXAMPLES", "30")),
    stateful_step_count=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_registry_invariants = RegistryMachine.TestCase


def test_operator_errors_are_permanent_failures():
    assert issubclass(GuardFailedError, EcrRetagError)
