"""The update checker against a director and an image repository built here, served over loopback HTTP:
the hostile cases a real server will not produce on request (expired or foreign-signed metadata,
repositories that disagree, payloads too long or altered, broken and redirected transfers)."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from securesystemslib.signer import CryptoSigner

from fleetkeeper_agent.errors import AgentError, UpdateRefused
from fleetkeeper_agent.uptane import UpdateChecker, VerifiedUpdate
from tests.agent.tuf_repository import Repository, RepositoryServer, in_days, repository_server, sha256

DEVICE_ID = "dev_0001"
DEVICE_TYPE = "rpi4"
PATH = "fw/2.0/fw.bin"
PAYLOAD = bytes(range(256)) * 1000  # 256,000 bytes: several chunks


def release(counter: int = 5, device_types: list[str] | None = None) -> dict[str, Any]:
    return {
        "fleetkeeper": {
            "name": "fw",
            "version": "2.0",
            "release_counter": counter,
            "module": "file",
            "device_types": device_types or [DEVICE_TYPE],
            "depends": {},
            "provides": {},
            "sbom_sha256": None,
        }
    }


def assignment(
    counter: int = 5, device_id: str = DEVICE_ID, device_type: str = DEVICE_TYPE
) -> dict[str, Any]:
    return {"fleetkeeper": {"device_id": device_id, "device_type": device_type, "release_counter": counter}}


@dataclass
class Fleet:
    image: Repository
    director: Repository
    server: RepositoryServer
    tuf_dir: Path

    def checker(self, url: str | None = None) -> UpdateChecker:
        return UpdateChecker(
            self.tuf_dir, url or self.server.url, ssl.create_default_context(), DEVICE_ID, DEVICE_TYPE
        )

    def serve(self) -> None:
        self.server.serve_repository(
            self.image, "/device/v1/repository/metadata/", "/device/v1/repository/targets/"
        )
        self.server.mount("/device/v1/director/metadata/", self.director.metadata_files())

    def assign(self, path: str = PATH, data: bytes = PAYLOAD, **custom: Any) -> None:
        self.director.add_target(path, data, assignment(**custom))
        self.director.payloads.clear()  # the director lists targets; it never serves them
        self.director.publish()
        self.serve()

    def check(self, installed: int = 0) -> VerifiedUpdate:
        update = self.checker().check(installed)
        assert update is not None
        return update


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    image, director = Repository(), Repository()
    image.add_target(PATH, PAYLOAD, release())
    image.publish()
    tuf_dir = tmp_path / "tuf"
    for name, repository in (("image", image), ("director", director)):
        (tuf_dir / name).mkdir(parents=True)
        (tuf_dir / name / "root.json").write_bytes(repository.root_bytes())
    with repository_server() as server:
        fleet = Fleet(image, director, server, tuf_dir)
        fleet.serve()
        yield fleet


def refused(fleet: Fleet, code: str, installed: int = 0) -> UpdateRefused:
    with pytest.raises(UpdateRefused) as caught:
        fleet.checker().check(installed)
    assert caught.value.code == code, caught.value
    return caught.value


# --- check ---------------------------------------------------------------------------------------------


def test_nothing_assigned_is_none_and_the_image_repository_is_left_alone(fleet: Fleet) -> None:
    assert fleet.checker().check(0) is None
    assert not any(path.startswith("/device/v1/repository/") for path in fleet.server.requests)


def test_an_agreed_target_is_a_verified_update(fleet: Fleet) -> None:
    fleet.assign()
    update = fleet.check(installed=5)  # the same counter again is not a rollback
    assert update == VerifiedUpdate(
        target_path=PATH,
        length=len(PAYLOAD),
        hashes={"sha256": sha256(PAYLOAD)},
        release=release()["fleetkeeper"],
        release_counter=5,
    )


@pytest.mark.parametrize("missing", ["director", "image"])
def test_without_trusted_roots_nothing_is_fetched(fleet: Fleet, missing: str) -> None:
    (fleet.tuf_dir / missing / "root.json").unlink()
    with pytest.raises(AgentError) as caught:
        fleet.checker().check(0)
    assert caught.value.code == "not_initialized"
    assert missing in caught.value.message
    assert fleet.server.requests.total() == 0


def test_expired_director_timestamp(fleet: Fleet) -> None:
    fleet.director.publish(timestamp_expires=in_days(-1))
    fleet.serve()
    refused(fleet, "metadata_expired")


def test_expired_image_timestamp(fleet: Fleet) -> None:
    fleet.image.publish(timestamp_expires=in_days(-1))
    fleet.assign()
    refused(fleet, "metadata_expired")


def test_director_targets_signed_by_an_unknown_key(fleet: Fleet) -> None:
    fleet.director.add_target(PATH, PAYLOAD, assignment())
    fleet.director.publish(targets_signer=CryptoSigner.generate_ed25519())
    fleet.serve()
    refused(fleet, "invalid_metadata")


def test_image_targets_signed_by_an_unknown_key(fleet: Fleet) -> None:
    # What a compromised server would try: add its own release to the image repository.
    fleet.image.add_target("evil/1.0/evil.bin", b"evil", release())
    fleet.image.publish(targets_signer=CryptoSigner.generate_ed25519())
    fleet.assign("evil/1.0/evil.bin", b"evil")
    refused(fleet, "invalid_metadata")


def test_a_target_for_another_device(fleet: Fleet) -> None:
    fleet.assign(device_id="dev_other")
    refused(fleet, "device_mismatch")


def test_a_target_for_another_device_type_in_the_director(fleet: Fleet) -> None:
    fleet.assign(device_type="x86")
    refused(fleet, "device_mismatch")


def test_a_release_not_signed_for_this_device_type(fleet: Fleet) -> None:
    fleet.image.add_target(PATH, PAYLOAD, release(device_types=["x86"]))
    fleet.image.publish()
    fleet.assign()
    refused(fleet, "device_type_mismatch")


def test_repositories_disagree_on_the_hash(fleet: Fleet) -> None:
    altered = PAYLOAD[:-1] + b"!"
    fleet.assign(data=altered)
    refused(fleet, "repositories_disagree")


def test_repositories_disagree_on_the_length(fleet: Fleet) -> None:
    fleet.assign(data=PAYLOAD + b"!")
    refused(fleet, "repositories_disagree")


def test_repositories_disagree_on_the_release_counter(fleet: Fleet) -> None:
    fleet.assign(counter=9)
    refused(fleet, "repositories_disagree")


def test_a_target_the_image_repository_lacks(fleet: Fleet) -> None:
    fleet.assign("fw/9.9/fw.bin")
    refused(fleet, "unknown_target")


def test_a_release_counter_below_the_installed_one(fleet: Fleet) -> None:
    fleet.assign()
    error = refused(fleet, "rollback_attack", installed=6)
    assert "6" in error.message


def test_older_metadata_than_already_trusted(fleet: Fleet) -> None:
    fleet.assign()
    old_files = fleet.director.metadata_files()
    fleet.director.publish()
    fleet.serve()
    fleet.check()
    fleet.server.mount("/device/v1/director/metadata/", old_files)
    refused(fleet, "rollback_attack")


def test_the_server_gone_is_a_network_error(fleet: Fleet) -> None:
    fleet.assign()
    with pytest.raises(AgentError) as caught:
        fleet.checker("http://127.0.0.1:9").check(0)
    assert caught.value.code == "network_error"
    assert not isinstance(caught.value, UpdateRefused)


# --- download ------------------------------------------------------------------------------------------


def test_download_verifies_and_renames(fleet: Fleet, tmp_path: Path) -> None:
    fleet.assign()
    dest = tmp_path / "fw.bin"
    assert fleet.checker().download(fleet.check(), dest) == dest
    assert dest.read_bytes() == PAYLOAD
    assert not dest.with_suffix(".part").exists()
    assert fleet.server.requests[f"/device/v1/repository/targets/fw/2.0/{sha256(PAYLOAD)}.fw.bin"] == 1


def test_a_broken_transfer_resumes_with_a_range_request(fleet: Fleet, tmp_path: Path) -> None:
    fleet.assign()
    fleet.server.behaviour.cut_after = 100_000
    dest = tmp_path / "fw.bin"
    fleet.checker().download(fleet.check(), dest)
    assert dest.read_bytes() == PAYLOAD
    assert fleet.server.ranges == ["bytes=100000-"]


def test_a_part_left_by_an_earlier_run_is_continued(fleet: Fleet, tmp_path: Path) -> None:
    fleet.assign()
    dest = tmp_path / "fw.bin"
    dest.with_suffix(".part").write_bytes(PAYLOAD[:12345])
    fleet.checker().download(fleet.check(), dest)
    assert dest.read_bytes() == PAYLOAD
    assert fleet.server.ranges == ["bytes=12345-"]


def test_more_bytes_than_signed_are_refused(fleet: Fleet, tmp_path: Path) -> None:
    fleet.assign()
    fleet.server.behaviour.extra_bytes = b"x" * 10
    dest = tmp_path / "fw.bin"
    with pytest.raises(UpdateRefused) as caught:
        fleet.checker().download(fleet.check(), dest)
    assert caught.value.code == "download_too_large"
    assert not dest.exists()
    assert not dest.with_suffix(".part").exists()


def test_altered_bytes_are_refused_and_the_part_deleted(fleet: Fleet, tmp_path: Path) -> None:
    fleet.assign()
    fleet.server.behaviour.replace_with = PAYLOAD[:-1] + b"!"
    dest = tmp_path / "fw.bin"
    with pytest.raises(UpdateRefused) as caught:
        fleet.checker().download(fleet.check(), dest)
    assert caught.value.code == "hash_mismatch"
    assert not dest.exists()
    assert not dest.with_suffix(".part").exists()


def test_a_redirect_to_another_host_is_followed(fleet: Fleet, tmp_path: Path) -> None:
    fleet.assign()
    update = fleet.check()
    with repository_server() as store:
        store.mount("/device/v1/repository/targets/", fleet.image.payloads)
        fleet.server.behaviour.redirect_to = store.url
        dest = fleet.checker().download(update, tmp_path / "fw.bin")
    assert dest.read_bytes() == PAYLOAD
    assert store.requests.total() == 1


def test_no_server_during_download_is_a_network_error_and_the_part_is_kept(
    fleet: Fleet, tmp_path: Path
) -> None:
    fleet.assign()
    update = fleet.check()
    dest = tmp_path / "fw.bin"
    dest.with_suffix(".part").write_bytes(PAYLOAD[:1000])
    with pytest.raises(AgentError) as caught:
        fleet.checker("http://127.0.0.1:9").download(update, dest)
    assert caught.value.code == "network_error"
    assert dest.with_suffix(".part").read_bytes() == PAYLOAD[:1000], "kept for the next attempt"
