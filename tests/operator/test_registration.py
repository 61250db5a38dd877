"""Issue 26.8: the webhook registration is level-triggered: an edited or replaced
ValidatingWebhookConfiguration is restored at the next resync, not only at a certificate change."""

from __future__ import annotations

from typing import Any

import kmock
import pytest
from emulator import eventually, stored
from test_admission import CONFIGURATIONS, webhook_poster

from quantjob.operator.registration import registered


def hooks(cluster: Any) -> list[dict[str, Any]]:
    return list((stored(cluster, CONFIGURATIONS, "quantjob.io", namespace=None) or {}).get("webhooks") or [])


@pytest.mark.asyncio
@pytest.mark.timeout(120)
async def test_an_edited_or_replaced_configuration_is_restored(cluster: kmock.KubernetesEmulator,
                                                               start_operator: Any) -> None:
    async with webhook_poster(cluster, start_operator):
        (first,) = await eventually(lambda: hooks(cluster))
        key = (kmock.resource(CONFIGURATIONS), None, "quantjob.io")
        edited = {**first, "failurePolicy": "Fail", "clientConfig": {"url": "https://elsewhere.example/validate"}}
        cluster.objects[key].patch({"webhooks": [edited]})
        restored = await eventually(lambda: hooks(cluster) == [first] and hooks(cluster))
        assert restored[0]["failurePolicy"] == "Ignore"
        # replaced by a configuration with no webhooks (e.g. re-applied from the chart)
        cluster.objects[key] = {"apiVersion": "admissionregistration.k8s.io/v1",
                                "kind": "ValidatingWebhookConfiguration", "metadata": {"name": "quantjob.io"},
                                "webhooks": []}
        await eventually(lambda: hooks(cluster) == [first])


def test_server_defaults_do_not_count_as_a_difference() -> None:
    desired = [{"name": "v.quantjob.io", "rules": [{"operations": ["CREATE"]}], "clientConfig": {"caBundle": "x"}}]
    defaulted = {"webhooks": [{**desired[0], "namespaceSelector": {}, "objectSelector": {},
                               "rules": [{"operations": ["CREATE"], "scope": "*"}], "matchPolicy": "Equivalent"}]}
    assert registered(defaulted, desired)
    assert not registered({"webhooks": []}, desired) and not registered(None, desired)
    assert not registered({"webhooks": [{**desired[0], "clientConfig": {"caBundle": "y"}}]}, desired)
