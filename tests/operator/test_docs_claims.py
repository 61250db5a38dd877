"""docs/operator.md states what the builders do (issue 26.9: it said the pods run as uid 1000)."""

from __future__ import annotations

import re
from pathlib import Path

from emulator import quantjob_manifest

from quantjob.operator.builders import WORKER_UID, build_job
from quantjob.operator.review import review_quantjob
from quantjob.operator.settings import Settings

DOC = (Path(__file__).resolve().parents[2] / "docs" / "operator.md").read_text(encoding="utf-8")


def test_every_uid_the_doc_names_is_the_pods_uid() -> None:
    resolution = review_quantjob(quantjob_manifest())
    assert resolution.job is not None
    pod = build_job(resolution.job, resolution, Settings(), "ml")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == pod["securityContext"]["runAsGroup"] == WORKER_UID
    named = {int(uid) for uid in re.findall(r"uid(?:/gid)? (\d+)", DOC)}
    assert named == {WORKER_UID}, named


def test_the_projected_token_claims_no_audience_of_its_own() -> None:
    """The API server is the token's only reader and refuses audiences it does not serve."""
    resolution = review_quantjob(quantjob_manifest())
    assert resolution.job is not None
    pod = build_job(resolution.job, resolution, Settings(), "ml")["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "api-token"]
    token = volume["projected"]["sources"][0]["serviceAccountToken"]
    assert "audience" not in token and token["expirationSeconds"] == 3600
    assert "audience-bound" not in DOC
