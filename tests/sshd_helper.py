"""A throw-away OpenSSH server on a loopback address, for the deploy tests (`test_deploy_ssh`, `test_deploy_hosts`):
host and user keys made for it, this user let in with the user key, nothing else. sshd missing: skip outside CI,
fail in CI (`.ci/run` installs openssh-server)."""
import os, shutil, socket, subprocess, time
from pathlib import Path

import pytest

from stage1_cascade.deploy.ssh import SSHTarget

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s: s.bind((host, 0)); return s.getsockname()[1]


def keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True, timeout=60)
    return path


def start_sshd(d: Path, listen: str = "127.0.0.1") -> tuple[SSHTarget, subprocess.Popen]:
    "An sshd on `listen`:<free port> with its config, keys and log in `d`; returns (target that gets in, its process)."
    if not (os.path.exists(SSHD) and shutil.which("ssh") and shutil.which("scp")):
        msg = "openssh-server/openssh-client not installed: `apt-get install -y openssh-server`; .ci/run installs it"
        if os.environ.get("CI"): pytest.fail(msg)
        pytest.skip(msg)
    host_key, user_key = keygen(d/"host_ed25519"), keygen(d/"user_ed25519")
    (d/"authorized_keys").write_text((d/"user_ed25519.pub").read_text())
    port, user = free_port(listen), subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
    (d/"sshd_config").write_text("\n".join([
        f"Port {port}", f"ListenAddress {listen}", f"HostKey {host_key}", f"AuthorizedKeysFile {d/'authorized_keys'}",
        f"PidFile {d/'sshd.pid'}", "StrictModes no", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
        "PubkeyAuthentication yes", "Subsystem sftp internal-sftp", "UsePAM no", "PermitRootLogin prohibit-password", f"AllowUsers {user}", ""]))
    if os.geteuid() == 0: os.makedirs("/run/sshd", exist_ok=True)   # sshd's privilege-separation folder
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d/"sshd_config")], stderr=open(d/"sshd.log", "w"))
    target = SSHTarget(f"{user}@{listen}", port=port, key=str(user_key), known_hosts=str(d/"known_hosts"))
    for _ in range(100):   # until sshd lets us in (a hang is caught by the 20 s)
        if subprocess.run(target.ssh_argv("true"), capture_output=True, timeout=30).returncode == 0: break
        if proc.poll() is not None: pytest.fail(f"sshd exited: {(d/'sshd.log').read_text()}")
        time.sleep(0.2)
    else: pytest.fail(f"sshd on {port} never let the test key in: {(d/'sshd.log').read_text()}")
    return target, proc


def stop_sshd(proc: subprocess.Popen):
    proc.terminate(); proc.wait(30)
