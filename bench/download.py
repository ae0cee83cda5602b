"""Artifact download throughput from the device listener against nginx serving the same file.

    python -m bench.download [--megabytes 200] [--rounds 3] [--profile FILE]

Sets up a server with one uploaded release and an enrolled device (bench/release_throughput.py),
then starts nginx (Debian's nginx-light or nginx, /usr/sbin/nginx) on free loopback ports with its
own configuration in the temporary directory: one worker process, `sendfile on`, the object
store's directory as its root, so both serve the very same file. nginx listens twice:

- with TLS and a required client certificate (the fleet CA, the device listener's own certificate
  and key): the like-for-like reference, since the device listener is always mTLS;
- plain HTTP with sendfile: the zero-copy ceiling, reported beside it.

One client for all three: curl (C, so the client's own cost is small and the same), TLS 1.3 with
TLS_AES_256_GCM_SHA384 forced, the device's certificate. The rounds alternate the servers; each
result is the median of its rounds. `--profile FILE` afterwards samples the server with py-spy
during extra downloads and writes collapsed stacks. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.release_throughput import ServedRelease, served_release

NGINX = "/usr/sbin/nginx"
TARGET_RATIO = 0.9  # DESIGN.md: ≥ 0.9 × nginx sendfile of the same file
CIPHER = "TLS_AES_256_GCM_SHA384"


@dataclass(frozen=True)
class Nginx:
    mtls_url: str
    plain_url: str
    version: str
    pid: int  # the master; its worker is its child


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process and its children's threads so far (utime + stime of
    each, from /proc): what serving cost, which a busy host inflates far less than wall time."""
    total = 0.0
    for each in [pid, *_children(pid)]:
        try:
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()] if path.exists() else []


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _nginx_binary() -> str:
    found = NGINX if os.access(NGINX, os.X_OK) else shutil.which("nginx")
    if not found:
        sys.exit("bench.download needs nginx as the reference: apt-get install nginx-light")
    return found


def _config(served: ServedRelease, directory: Path, mtls_port: int, plain_port: int) -> str:
    pki = served.server.data_dir / "pki"
    objects = served.server.data_dir / "objects"
    # The temporary directory is private to this user; a root master must not hand requests to an
    # unprivileged worker that cannot read it.
    user = "user root;\n" if os.geteuid() == 0 else ""
    temp_paths = "\n".join(
        f"    {name}_temp_path {directory / name};"
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""{user}worker_processes 1;
pid {directory / "nginx.pid"};
error_log {directory / "error.log"} warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    default_type application/octet-stream;
{temp_paths}
    server {{
        listen 127.0.0.1:{mtls_port} ssl;
        ssl_certificate {pki / "device-listener.crt"};
        ssl_certificate_key {pki / "device-listener.key"};
        ssl_client_certificate {pki / "ca.crt"};
        ssl_verify_client on;
        ssl_protocols TLSv1.2 TLSv1.3;
        root {objects};
    }}
    server {{
        listen 127.0.0.1:{plain_port};
        root {objects};
    }}
}}
"""


@contextmanager
def running_nginx(served: ServedRelease) -> Iterator[Nginx]:
    binary = _nginx_binary()
    directory = served.work / "nginx"
    directory.mkdir()
    mtls_port, plain_port = _free_port(), _free_port()
    config = directory / "nginx.conf"
    config.write_text(_config(served, directory, mtls_port, plain_port))
    version = subprocess.run([binary, "-v"], capture_output=True, text=True).stderr.strip()
    process = subprocess.Popen(
        [
            binary,
            "-p",
            str(directory),
            "-c",
            str(config),
            "-e",
            str(directory / "error.log"),
            "-g",
            "daemon off;",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_listening(process, mtls_port, directory / "error.log")
        _wait_listening(process, plain_port, directory / "error.log")
        path = urlsplit(served.target_url).path.removeprefix("/device/v1/repository")
        yield Nginx(
            mtls_url=f"https://localhost:{mtls_port}{path}",
            plain_url=f"http://127.0.0.1:{plain_port}{path}",
            version=version.removeprefix("nginx version: "),
            pid=process.pid,
        )
    finally:
        process.terminate()
        process.wait(timeout=30)


def _wait_listening(process: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"nginx stopped at start:\n{log.read_text() if log.exists() else ''}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nginx did not listen on {port}")


def curl_download(served: ServedRelease, url: str) -> float:
    """Seconds curl took to fetch `url` whole into /dev/null, with the device's certificate."""
    command = ["curl", "--silent", "--show-error", "--fail", "--output", "/dev/null"]
    command += ["--write-out", "%{size_download} %{time_total}"]
    if url.startswith("https:"):
        command += ["--cacert", str(served.ca_cert), "--cert", str(served.device_cert)]
        command += ["--key", str(served.device_key), "--tlsv1.3", "--tls13-ciphers", CIPHER]
    answer = subprocess.run([*command, url], capture_output=True, text=True, check=True, timeout=600)
    size, seconds = answer.stdout.split()
    if int(size) != served.size:
        raise RuntimeError(f"{url}: received {size} bytes, expected {served.size}")
    return float(seconds)


def _device_url(served: ServedRelease) -> str:
    # curl checks the name against the listener's certificate, issued for localhost.
    return served.target_url.replace("://127.0.0.1:", "://localhost:")


def profile(served: ServedRelease, out: str, downloads: int) -> None:
    """py-spy's collapsed stacks of the server while curl downloads the target `downloads` times."""
    # py-spy is installed into the venv beside this interpreter, which may not be on PATH.
    spy_binary = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    spy = subprocess.Popen(
        [
            spy_binary,
            "record",
            "--pid",
            str(served.server.process.pid),
            "--rate",
            "250",
            "--nonblocking",
            "--format",
            "raw",
            "--output",
            out,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(1.0)  # py-spy attaches
        for _ in range(downloads):
            curl_download(served, _device_url(served))
    finally:
        spy.send_signal(2)  # SIGINT: py-spy writes what it has
        spy.wait(timeout=60)


def run(megabytes: int, rounds: int, profile_out: str | None) -> dict[str, Any]:
    mb = megabytes * 1024 * 1024 / 1e6  # rates in MB/s (10^6 bytes), as in release_throughput
    with served_release(megabytes) as served, running_nginx(served) as nginx:
        urls = {
            "fleetkeeper": _device_url(served),
            "nginx_mtls": nginx.mtls_url,
            "nginx_plain": nginx.plain_url,
        }
        pids = {"fleetkeeper": served.server.process.pid, "nginx_mtls": nginx.pid, "nginx_plain": nginx.pid}
        for url in urls.values():
            curl_download(served, url)  # warm the page cache and each server
        seconds: dict[str, list[float]] = {name: [] for name in urls}
        cpu: dict[str, list[float]] = {name: [] for name in urls}
        for _ in range(rounds):
            for name, url in urls.items():
                before = cpu_seconds(pids[name])
                seconds[name].append(curl_download(served, url))
                cpu[name].append(cpu_seconds(pids[name]) - before)
        rate = {name: mb / statistics.median(times) for name, times in seconds.items()}
        cpu_ms_per_mb = {name: 1000 * statistics.median(used) / mb for name, used in cpu.items()}
        if profile_out:
            profile(served, profile_out, max(3, rounds))
    curl_version = subprocess.run(["curl", "--version"], capture_output=True, text=True).stdout.split()[1]
    return {
        "benchmark": "artifact_download",
        "megabytes": megabytes,
        "rounds": rounds,
        "client": f"curl {curl_version}, TLS 1.3 {CIPHER}, client certificate",
        "mb_per_s": round(rate["fleetkeeper"], 1),
        "reference": f"nginx {nginx.version}, TLS with a required client certificate, sendfile on, 1 worker",
        "reference_mb_per_s": round(rate["nginx_mtls"], 1),
        "ratio": round(rate["fleetkeeper"] / rate["nginx_mtls"], 3),
        "nginx_plain_sendfile_mb_per_s": round(rate["nginx_plain"], 1),
        "ratio_to_plain_sendfile": round(rate["fleetkeeper"] / rate["nginx_plain"], 3),
        "target_ratio": TARGET_RATIO,
        # Server CPU per MB sent (median of the rounds): the comparison a shared host disturbs least.
        "server_cpu_ms_per_mb": round(cpu_ms_per_mb["fleetkeeper"], 3),
        "nginx_mtls_cpu_ms_per_mb": round(cpu_ms_per_mb["nginx_mtls"], 3),
        "nginx_plain_cpu_ms_per_mb": round(cpu_ms_per_mb["nginx_plain"], 3),
        "seconds": {name: [round(value, 3) for value in times] for name, times in seconds.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--megabytes", type=int, default=200, help="size of the artifact's payload, MiB")
    parser.add_argument("--rounds", type=int, default=3, help="downloads from each server")
    parser.add_argument("--profile", help="write py-spy's collapsed stacks of the server's downloads here")
    args = parser.parse_args()
    if args.megabytes < 1 or args.rounds < 1:
        parser.error("--megabytes and --rounds must be at least 1")
    _nginx_binary()  # fail before the setup when the reference is missing
    print(json.dumps(run(args.megabytes, args.rounds, args.profile)))


if __name__ == "__main__":
    main()
