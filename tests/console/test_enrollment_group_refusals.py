"""The enrollment page's forms (accept into a group, pre-authorize, new token) answer a group the
operator does not see exactly as an unknown one, as the API does. In process, over plain HTTP with
the session cookie, on both databases."""

from __future__ import annotations

import re

import httpx2

from tests.conftest import Api
from tests.helpers.console import console_as
from tests.helpers.devices import FakeDevice, enroll, public_pem
from tests.helpers.groups import group, member_of
from tests.helpers.users import PASSWORD

# Per-request values of a rendered page: the form token and the script nonce.
_PER_REQUEST = re.compile(r'(name="csrf_token" value|nonce)="[^"]*"')


def shown(page: httpx2.Response, name: str) -> tuple[int, str]:
    return page.status_code, _PER_REQUEST.sub("", page.text).replace(name, "nothing-here")


async def test_the_enrollment_forms_answer_an_unseen_group_as_an_unknown_one(api: Api) -> None:
    await group(api, "plant-3")
    await group(api, "plant-4")
    device = FakeDevice()
    await enroll(api.runtime, device)
    await member_of(api, "plant-3", device.device_id)
    await api.create_user("operator-3", PASSWORD, roles=[{"role": "admin", "device_groups": ["plant-3"]}])

    async with console_as(api, "operator-3") as console:
        queue = await console.get("/enrollment")
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', queue.text)
        assert csrf
        forms = {
            f"/enrollment/{device.device_id}/accept": {},
            "/enrollment/preauthorize": {"device_type": "rpi4", "public_key": public_pem(FakeDevice().key)},
            "/enrollment/tokens": {"name": "line 7"},
        }
        for path, fields in forms.items():
            answers = [
                await console.post(path, data={**fields, "group": name, "csrf_token": csrf.group(1)})
                for name in ("plant-4", "nothing-here")
            ]
            assert answers[1].status_code == 404, (path, answers[1].text)
            assert "no device group named nothing-here" in answers[1].text
            assert shown(answers[0], "plant-4") == shown(answers[1], "nothing-here"), path

        still = await console.get("/enrollment")
        assert str(device.device_id) in still.text, "nothing was accepted"
