"""Amazon ECR's documented limits: the one home of each number, for the core and the ECR double.

Sources: the botocore service model (``botocore/data/ecr/2015-09-21/service-2.json``) and the
ECR user guide's quotas page.
"""

from __future__ import annotations

#: imageIds per BatchGetImage, BatchDeleteImage and DescribeImages call.
MAX_IMAGE_IDS = 100
#: repositoryNames per DescribeRepositories call.
MAX_REPOSITORY_NAMES = 100
#: An image tag's length in characters (the API's limit; the OCI grammar allows 128).
MAX_TAG_CHARS = 300
#: The PutImage ``imageManifest`` parameter, in characters.
MAX_MANIFEST_CHARS = 4_194_304
#: DescribeImages / ListImages ``maxResults``: 1 to this; ...
MAX_RESULTS = 1000
#: ... and this when it is not given.
DEFAULT_MAX_RESULTS = 100
#: A repository name's length in characters.
MIN_REPOSITORY_NAME_CHARS = 2
MAX_REPOSITORY_NAME_CHARS = 256
