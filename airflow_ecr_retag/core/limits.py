"""Amazon ECR's documented limits: the one home of each number, for the core and the ECR double.

Sources: the botocore service model (``botocore/data/ecr/2015-09-21/service-2.json``) and the
ECR user guide's quotas page.
"""

from __future__ import annotations

#: imageIds per BatchGetImage, BatchDeleteImage and DescribeImages call.
MAX_IMAGE_IDS = 100
#: An image tag's length in characters (the API's limit; the OCI grammar allows 128).
MAX_TAG_CHARS = 300
#: The PutImage ``imageManifest`` parameter, in characters.
MAX_MANIFEST_CHARS = 4_194_304
#: DescribeImages / ListImages / DescribeImageScanFindings ``maxResults``: 1 to this; ...
MAX_RESULTS = 1000
#: ... and this when it is not given.
DEFAULT_MAX_RESULTS = 100
#: DescribeRepositories ``maxResults``: 1 to this (100 when it is not given).
MAX_REPOSITORY_RESULTS = 1000
DEFAULT_REPOSITORY_RESULTS = 100
#: DescribeRepositories ``repositoryNames``: 1 to this.
MAX_REPOSITORY_NAMES = 100
#: A repository name's length in characters.
MIN_REPOSITORY_NAME_CHARS = 2
MAX_REPOSITORY_NAME_CHARS = 256

# Layer transfer (BatchCheckLayerAvailability ... CompleteLayerUpload) and referrers.
#: Layer digests per BatchCheckLayerAvailability and CompleteLayerUpload call.
MAX_LAYER_DIGESTS = 100
#: UploadLayerPart ``layerPartBlob``: the API's limit in bytes (the botocore model) ...
MAX_LAYER_PART_API_BYTES = 20_971_520
#: ... and the quotas page's part sizes: every part but the last at least the minimum
#: (LayerPartTooSmallException), none over the maximum (also InitiateLayerUpload's ``partSize``).
MIN_LAYER_PART_BYTES = 5 * 1024 * 1024
MAX_LAYER_PART_BYTES = 10 * 1024 * 1024
#: Layer parts per upload (quotas page).
MAX_LAYER_PARTS = 4_200
#: ListImageReferrers ``maxResults``: 1 to this; 20 when it is not given; ...
MAX_REFERRERS_RESULTS = 50
DEFAULT_REFERRERS_RESULTS = 20
#: ... and at most this many ``filter.artifactTypes``.
MAX_REFERRER_ARTIFACT_TYPES = 5
#: GetAuthorizationToken: a registry token is valid this long (12 hours).
AUTHORIZATION_TOKEN_SECONDS = 12 * 60 * 60
#: GetAuthorizationToken ``registryIds``: 1 to this.
MAX_AUTHORIZATION_REGISTRY_IDS = 10

# Image scanning (StartImageScan, DescribeImageScanFindings).
#: The severities of ``findingSeverityCounts`` (the botocore model's FindingSeverity), most severe first.
FINDING_SEVERITIES: tuple[str, ...] = ("CRITICAL", "HIGH", "MEDIUM", "LOW", "INFORMATIONAL", "UNDEFINED")
#: StartImageScan: one basic scan per image in this many seconds, a scan on push included; ...
BASIC_SCAN_INTERVAL_SECONDS = 24 * 60 * 60
#: ... and this many basic scans per registry in that time, scans on push included.
BASIC_SCANS_PER_INTERVAL = 100_000
