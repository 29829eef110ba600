"""Stateful property test: random sequences of pushes, promotions, guarded promotions, moves,
releases, roll-backs of any earlier promotion, hygiene runs with random rules (and random
``include_archived``, ``protect_pulled_within_days``, ``max_removals`` and ``last_tag_preference``),
copies into another account, concurrent external tag moves, archiving and restoring images, and
pulls, against the double.

Invariants after every step:
- with ``allow_image_deletion=False`` the set of images only grows;
- protected tags never change except through a promotion that targets them, or the roll-back
  of one;
- every operator's report matches the double's real state;
- a roll-back puts every recorded tag back at exactly its recorded previous digest (or removes
  an added one), or reports why not, and changes no other tag;
- hygiene never removes a tag of an archived image unless ``include_archived``, nor one of an
  image pulled within ``protect_pulled_within_days``; over ``max_removals`` it removes nothing,
  under it never more; the tag an image keeps follows ``last_tag_preference``.
- a copy leaves the source as it was, and in the other account the images only grow.
"""

from __future__ import annotations

import fnmatch
import itertools
import math
import os
import time
from datetime import UTC, datetime, timedelta

import pytest
from helpers import AWS, make_context
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, multiple, rule

from airflow_ecr_retag import (
    EcrCopyImageOperator,
    EcrReleaseOperator,
    EcrRetagOperator,
    EcrRollbackOperator,
    EcrTagHygieneOperator,
)
from airflow_ecr_retag.exceptions import EcrRetagError, GuardFailedError, RemovalCapExceededError
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
STATUSES = ["ACTIVE", "ARCHIVED", "ACTIVATING"]
cap_strategy = st.one_of(st.none(), st.integers(0, 4), st.sampled_from(["0%", "25%", "50%", "100%"]))


def expected_survivor(tags, preference):
    """The tag an image whose every tag is selected keeps: the highest-sorting match of the first
    preference glob any of its tags matches, else its highest-sorting tag."""
    for pattern in preference:
        matching = [t for t in tags if fnmatch.fnmatchcase(t, pattern)]
        if matching:
            return max(matching)
    return max(tags)


class RegistryMachine(RuleBasedStateMachine):
    images = Bundle("images")
    promotions = Bundle("promotions")

    def __init__(self) -> None:
        RuleBasedStateMachine.__init__(self)  # not super(): HygieneOptionsMachine shares this
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

    def _pullable(self, digest: str) -> bool:
        """Only ACTIVE images can be pulled, so only they can be promoted."""
        image = self.ecr.images(REPO).get(digest)
        return image is not None and image.status_at(self.ecr.clock()) == "ACTIVE"

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
        if not self._pullable(digest):  # archived images cannot be pulled, so not promoted
            return multiple()
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
        if source not in tags or source in targets or not (self._pullable(tags[source]) and self._pullable(stale)):
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
        if source not in tags or source == target or not self._pullable(tags[source]):
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
        if not self._pullable(digest):
            return multiple()
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
        if not self._pullable(digest):
            return
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
        involved = {promotion["digest"], *promotion["moved"].values()}
        involved |= {before[t] for t in promotion["added"] if t in before}
        if not all(self._pullable(d) for d in involved):
            return  # an archived image cannot be read back or re-put: not what this checks
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

    @rule(
        rules=st.lists(rule_strategy, min_size=1, max_size=3),
        dry_run=st.booleans(),
        race=st.one_of(st.none(), st.tuples(st.sampled_from(FREE_TAGS), images)),
        include_archived=st.booleans(),
        pulled_within=st.sampled_from([None, 7, 30, 45]),
        cap=cap_strategy,
        preference=st.lists(st.sampled_from([*PATTERNS, "pr-2", "sha-1", "rc"]), max_size=3),
        archive=st.one_of(st.none(), st.tuples(images, st.sampled_from(STATUSES))),
        pull=st.one_of(st.none(), st.tuples(st.sampled_from(FREE_TAGS), st.integers(0, 60))),
    )
    def hygiene_with_options(
        self, rules, dry_run, race, include_archived, pulled_within, cap, preference, archive, pull
    ):
        if archive:
            self.change_storage_class(*archive)
        if pull:
            self.pulled(*pull)
        if race and not dry_run:
            tag, digest = race
            self.ecr.before_call("DescribeImages", lambda d: d.move_tag(REPO, tag, digest), call=2)
        now = self.ecr.clock()
        stored = self.ecr.images(REPO)
        status = {d: image.status_at(now) for d, image in stored.items()}
        pulled = {d: image.last_pulled for d, image in stored.items()}
        tags_before = self.ecr.tags(REPO)
        self.ecr.reset_calls()
        context = make_context()
        operator = EcrTagHygieneOperator(
            task_id="h",
            repository_name=REPO,
            rules=rules,
            protect=PROTECT,
            dry_run=dry_run,
            include_archived=include_archived,
            protect_pulled_within_days=pulled_within,
            max_removals=cap,
            last_tag_preference=preference,
            **AWS,
        )
        try:
            operator.execute(context)
            over_cap = False
        except RemovalCapExceededError:
            over_cap = True
        self.ecr.clear_faults()
        report = context["ti"].xcom["hygiene_report"]
        tags = self.ecr.tags(REPO)
        assert report["images_deleted"] == [] and report["failed"] == []
        assert set(self.ecr.images(REPO)) >= set(stored)
        removed = report["removed"]
        if dry_run:
            assert all(r["tag"] in tags for r in removed)
        else:
            assert all(r["tag"] not in tags for r in removed)
            assert all(tags.get(k["tag"]) == k["digest"] for k in report["skipped_last_tag"])
        assert not {r["tag"] for r in removed} & set(PROTECTED_TAGS)
        # Archived images: seen (and cleaned) only when asked.
        not_active = {d for d, s in status.items() if s != "ACTIVE"}
        if include_archived:
            assert report["images_archived_seen"] == len(not_active)
            assert report["images_scanned"] == len(stored)
        else:
            assert report["images_archived_seen"] == 0
            assert not {r["digest"] for r in removed} & not_active
        # Tags still in use.
        if pulled_within is None:
            assert report["protected_by_pull_time"] == 0
        else:
            cutoff = time.time() - pulled_within * 86400
            for entry in removed:
                assert pulled[entry["digest"]] is None or pulled[entry["digest"]] < cutoff, entry
        # The cap: checked before any BatchDeleteImage.
        if cap is None:
            assert report["removal_cap"] is None and not over_cap
        else:
            limit = math.floor(report["tags_scanned"] * float(cap[:-1]) / 100) if isinstance(cap, str) else cap
            assert report["removal_cap"]["limit"] == limit
            assert over_cap == report["removal_cap"]["exceeded"] == (report["removal_cap"]["planned"] > limit)
            if over_cap:
                assert removed == [] and self.ecr.write_calls == 0
                assert set(tags_before) <= set(tags)  # a race may move a tag; none is removed
            else:
                assert len(removed) + len(report["already_absent"]) <= limit
        event(f"hygiene with options: {'over the cap' if over_cap else 'within the cap'}")
        archived = "some archived images" if not_active else "no archived images"
        event(f"hygiene with options: {archived}, include_archived={include_archived}")
        event(f"hygiene with options: {'some' if report['protected_by_pull_time'] else 'no'} tags spared by pull time")
        # The survivor follows the preference.
        if not over_cap:
            for kept in report["skipped_last_tag"]:
                present = [kept["tag"], *(r["tag"] for r in removed if r["digest"] == kept["digest"])]
                assert kept["tag"] == expected_survivor(present, preference), (kept, present, preference)
        self._after()

    @rule(digest=images, status=st.sampled_from(STATUSES))
    def change_storage_class(self, digest, status):
        """Archive or restore an image, as UpdateImageStorageClass (or a lifecycle policy) does."""
        if digest in self.ecr.images(REPO):
            self.ecr.set_image_status(REPO, digest, status)
        self._after()

    def pulled(self, tag, days_ago):
        """Someone pulled the image the tag points at, ``days_ago`` days ago (promotions pull too)."""
        digest = self.ecr.tags(REPO).get(tag)
        if digest is not None:
            self.ecr.set_last_pulled(REPO, digest, time.time() - days_ago * 86400)

    @rule(digest=images, target_list=st.lists(st.sampled_from(ALL_TAGS), min_size=1, max_size=2, unique=True))
    def copy_to_another_account(self, digest, target_list):
        if not self._pullable(digest):  # archived images cannot be pulled, so not copied
            self._after()
            return
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


class HygieneOptionsMachine(RuleBasedStateMachine):
    """The same repository and rules, narrowed to what hygiene's options meet: pushes, promotions
    (which pull), archiving and restoring, external moves and hygiene with random options, so that
    every example runs it several times."""

    images = RegistryMachine.images
    promotions = RegistryMachine.promotions
    __init__ = RegistryMachine.__init__
    teardown = RegistryMachine.teardown
    _snapshot_protected = RegistryMachine._snapshot_protected
    _pullable = RegistryMachine._pullable
    _after = RegistryMachine._after
    _push = RegistryMachine._push
    pulled = RegistryMachine.pulled
    first_image = RegistryMachine.first_image
    push_image = RegistryMachine.push_image
    promote = RegistryMachine.promote
    hygiene_with_options = RegistryMachine.hygiene_with_options
    change_storage_class = RegistryMachine.change_storage_class
    external_move = RegistryMachine.external_move
    images_only_grow = RegistryMachine.images_only_grow


HygieneOptionsMachine.TestCase.settings = settings(
    max_examples=int(os.environ.get("PROPERTY_EXAMPLES", "30")),
    stateful_step_count=10,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_hygiene_options_invariants = HygieneOptionsMachine.TestCase


def test_operator_errors_are_permanent_failures():
    assert issubclass(GuardFailedError, EcrRetagError)
