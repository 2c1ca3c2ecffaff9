"""Finding a path's filesystem in mountinfo, and the service refusing a ledger on a network share."""

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support import make_project

from daemon.config import load_settings
from daemon.folders import FolderError
from daemon.mounts import Mount, filesystem_of, mount_of, parse_mountinfo, unescape
from daemon.service import Service

MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
25 22 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
40 22 0:35 / /srv/share rw,relatime shared:20 - cifs //files/scm rw,vers=3.1.1
41 40 0:36 / /srv/share/local rw,relatime - tmpfs tmpfs rw
42 22 0:37 / /mnt/nfs\\040data rw,relatime - nfs4 nas:/export/data rw
43 22 0:38 / /srv/shared rw - xfs /dev/sdb1 rw
garbage line
"""


def test_parse_reads_mount_point_type_and_source_past_optional_fields() -> None:
    mounts = parse_mountinfo(MOUNTINFO)
    assert Mount("/srv/share", "cifs", "//files/scm") in mounts
    assert Mount("/mnt/nfs data", "nfs4", "nas:/export/data") in mounts
    assert len(mounts) == 6


def test_the_longest_matching_mount_point_wins_on_whole_components() -> None:
    mounts = parse_mountinfo(MOUNTINFO)
    assert mount_of("/srv/share/state/ledger.sqlite3", mounts) == Mount("/srv/share", "cifs", "//files/scm")
    assert mount_of("/srv/share/local/ledger.sqlite3", mounts) == Mount("/srv/share/local", "tmpfs", "tmpfs")
    assert mount_of("/srv/shared/ledger.sqlite3", mounts) == Mount("/srv/shared", "xfs", "/dev/sdb1")
    assert mount_of("/var/lib/scm-daemon", mounts) == Mount("/", "ext4", "/dev/sda1")
    assert mount_of("/mnt/nfs data/x", mounts) == Mount("/mnt/nfs data", "nfs4", "nas:/export/data")
    assert mount_of("/srv/share", mounts) == Mount("/srv/share", "cifs", "//files/scm")


def test_a_mount_stacked_on_the_same_point_hides_the_one_below() -> None:
    text = MOUNTINFO + "50 40 0:40 / /srv/share rw - ext4 /dev/sdc1 rw\n"
    assert mount_of("/srv/share/x", parse_mountinfo(text)) == Mount("/srv/share", "ext4", "/dev/sdc1")


@given(st.text(alphabet=st.characters(min_codepoint=1, max_codepoint=0x2FF), min_size=1))
def test_unescape_undoes_the_kernels_octal_escapes(name: str) -> None:
    escaped = "".join(f"\\{ord(c):03o}" if c in " \t\n\\" else c for c in name)
    assert unescape(escaped) == name


def test_the_real_mountinfo_places_tmp_path_on_a_local_filesystem(tmp_path: Path) -> None:
    mount = filesystem_of(tmp_path / "not-yet" / "ledger.sqlite3")
    if mount is None:
        pytest.skip("no /proc/self/mountinfo here")
    assert not mount.network


def test_an_unreadable_mountinfo_means_unknown(tmp_path: Path) -> None:
    assert filesystem_of(tmp_path, mountinfo=tmp_path / "missing") is None


def test_the_service_refuses_a_ledger_on_a_network_filesystem(tmp_path: Path) -> None:
    project = make_project(tmp_path / "site", "http://127.0.0.1:9")
    settings = load_settings(project.config, env={"SCM_API__TOKEN": "t" * 20})
    state = str(project.ledger.parent).replace(" ", "\\040")
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(f"{MOUNTINFO}60 22 0:50 / {state} rw - nfs4 nas:/scm rw\n")
    project.ledger.parent.mkdir(parents=True)
    with pytest.raises(FolderError) as raised:
        Service.from_settings(settings, mountinfo=mountinfo)
    message = str(raised.value)
    assert "network filesystem (nfs4 nas:/scm" in message
    assert "set paths.ledger" in message
    assert not project.ledger.exists()  # refused before SQLite created anything there
