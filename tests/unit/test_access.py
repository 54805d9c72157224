"""What a lab's network asks of the coordinator's machine: proxy settings, CA certificates, a git mirror folder."""

import subprocess

import pytest

from coordinator import access
from coordinator.devstack import DevstackError

PEM = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUQ2Vy\ndGlmaWNhdGU=\n-----END CERTIFICATE-----"


def test_proxy_settings_exempt_the_clouds_own_addresses():
    environ = {
        "HTTPS_PROXY": "http://proxy.example:3128",
        "http_proxy": "http://proxy.example:3128",
        "no_proxy": "example.net",
    }
    assert access.proxy_settings(environ, ["10.100.1.3", "10.100.1.2", "10.100.1.0/24", None]) == [
        "http_proxy=http://proxy.example:3128",
        "https_proxy=http://proxy.example:3128",
        "no_proxy=example.net,localhost,127.0.0.1,10.100.1.3,10.100.1.2,10.100.1.0/24",
    ]


def test_no_proxy_in_the_environment_means_no_settings():
    assert access.proxy_settings({"PATH": "/bin"}, ["10.100.1.3"]) == []


@pytest.mark.parametrize(
    "value",
    ['http://p:3128";\nAPT::Update::Pre-Invoke {"touch /x"', "http://p:3128 x", "http://p/$(reboot)", "http://p/`id`"],
    ids=["apt-directive", "space", "dollar", "backquote"],
)
def test_a_proxy_value_that_could_reach_a_config_as_code_is_refused(value):
    with pytest.raises(DevstackError, match="is not a plain URL or host list"):
        access.proxy_settings({"http_proxy": value})


def test_host_certificates_are_the_pem_blocks_of_crt_files(tmp_path):
    (tmp_path / "corp").mkdir()
    (tmp_path / "corp" / "proxy.crt").write_text(f"# our proxy\n{PEM}\n")
    (tmp_path / "two.crt").write_text(f"{PEM}\n{PEM}\n")
    (tmp_path / "notes.txt").write_text(PEM)
    assert access.host_ca_certificates(str(tmp_path)) == [PEM] * 3
    assert access.host_ca_certificates(str(tmp_path / "missing")) == []


def test_a_mirror_folder_serves_bundles_bare_repositories_and_checkouts(tmp_path):
    (tmp_path / "nova.bundle").write_bytes(b"# v2 git bundle\n")
    subprocess.run(["git", "init", "-q", "--bare", str(tmp_path / "keystone.git")], check=True)
    subprocess.run(["git", "init", "-q", str(tmp_path / "devstack")], check=True)
    (tmp_path / "README.md").write_text("not a repository")
    (tmp_path / "empty").mkdir()
    (tmp_path / "-bad.bundle").write_bytes(b"")
    assert access.mirror_entries(str(tmp_path)) == {
        "devstack": str(tmp_path / "devstack"),
        "keystone": str(tmp_path / "keystone.git"),
        "nova": str(tmp_path / "nova.bundle"),
    }


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda path: None, "is not a folder on this machine"),
        (lambda path: path.mkdir(), "holds no git bundle or repository"),
    ],
    ids=["missing", "empty"],
)
def test_a_mirror_folder_without_repositories_is_named(tmp_path, make, words):
    folder = tmp_path / "mirror"
    make(folder)
    with pytest.raises(DevstackError, match=words):
        access.mirror_entries(str(folder))
