"""Offline tests of metanet_utils.ops.download against a local HTTP server on 127.0.0.1.

The server serves small stand-ins made here (a zip of three ISIC_*.jpg, the ground-truth zip,
CSVs, a Dataverse API answer) and misbehaves on request: cuts the first transfer halfway,
ignores Range, corrupts bytes, or answers 404.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import shutil
import socket
import threading
import zipfile
from collections import namedtuple
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

import pytest

from metanet_utils.ops import download as dl
from metanet_utils.ops.download import DownloadError, UnsafeArchiveError, download_complete, download_file, \
    download_official, safe_extract

pytestmark = [pytest.mark.timeout(60),
              pytest.mark.filterwarnings("ignore:Dataverse's HAM10000 metadata has md5:UserWarning")]

IMAGE_IDS = ("ISIC_0024306", "ISIC_0024307", "ISIC_0024308")
META = (b"lesion_id,image_id,dx,dx_type,age,sex,localization\n"
        b"HAM_0000118,ISIC_0024306,nv,follow_up,45.0,male,trunk\n"
        b"HAM_0000118,ISIC_0024307,nv,follow_up,45.0,male,trunk\n"
        b"HAM_0002730,ISIC_0024308,mel,histo,60.0,female,face\n")
IMAGES = "/isic/ISIC2018_Task3_Training_Input.zip"


def _zip(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _files() -> dict[str, bytes]:
    rng = random.Random(0)  # incompressible images of 200 kB each: a cut transfer has something to resume
    images = {f"ISIC2018_Task3_Training_Input/{i}.jpg": rng.randbytes(200_000) for i in IMAGE_IDS}
    api = {"data": {"latestVersion": {"files": [
        {"dataFile": {"id": 1, "filename": "HAM10000_images_part_1.zip", "md5": "0" * 32}},
        {"dataFile": {"id": 42, "filename": "HAM10000_metadata.tab", "originalFileFormat": "text/csv",
                      "md5": hashlib.md5(META).hexdigest()}},
    ]}}}
    return {
        IMAGES: _zip({**images, "ISIC2018_Task3_Training_Input/LICENSE.txt": b"CC BY-NC 4.0\n"}),
        "/isic/ISIC2018_Task3_Training_GroundTruth.zip": _zip({
            "ISIC2018_Task3_Training_GroundTruth/ISIC2018_Task3_Training_GroundTruth.csv":
                b"image,MEL,NV,BCC,AKIEC,BKL,DF,VASC\nISIC_0024306,0.0,1.0,0.0,0.0,0.0,0.0,0.0\n"}),
        "/isic/ISIC2018_Task3_Training_LesionGroupings.csv": b"image,lesion_id\nISIC_0024306,HAM_0000118\n",
        "/api/datasets/:persistentId/?persistentId=doi:10.7910/DVN/DBW86T": json.dumps(api).encode(),
        "/api/access/datafile/42?format=original": META,
        "/api/access/datafile/42": META.replace(b",", b"\t"),  # the ingested .tab, not what we want
    }


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    files: dict[str, bytes]
    modes: dict[str, set]
    log: list

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        u = urlsplit(self.path)
        path, data = u.path, self.files.get(u.path + (f"?{unquote(u.query)}" if u.query else ""))
        modes, rng = self.modes.get(path, set()), self.headers.get("Range")
        self.log.append((path, rng))
        if data is None or "404" in modes:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            return self.end_headers()
        data = bytes(b ^ 0x5A for b in data) if "corrupt" in modes else data
        start = int(rng[6:].split("-")[0]) if rng and "ignore_range" not in modes else 0
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        if "cut_first" in modes and sum(p == path for p, _ in self.log) == 1:
            self.wfile.write(data[start:len(data) // 2])
            self.close_connection = True
        else:
            self.wfile.write(data[start:])


Server = namedtuple("Server", "url files modes log")


@pytest.fixture()
def server(monkeypatch):
    """A local server; the module's default addresses point at it, as a test's `isic` and `dataverse`."""
    state = {"files": _files(), "modes": {}, "log": []}
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), type("H", (_Handler,), state))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    monkeypatch.setattr(dl, "ISIC_BASE_URLS", (url + "/isic",))
    monkeypatch.setattr(dl, "DATAVERSE_SERVER", url)
    yield Server(url, state["files"], state["modes"], state["log"])
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def _small_disk_need(monkeypatch):
    """The free-space check plans for the 2.6 GB zip; the stand-in is 600 kB."""
    monkeypatch.setattr(dl, "IMAGES_ZIP_BYTES", 1_000_000)


def _dead_url() -> str:
    with socket.socket() as s:  # a port nobody listens on once closed
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_download_writes_the_layout_data_reads_and_a_second_call_fetches_nothing(server, tmp_path):
    from metanet_utils.data import load_metadata

    server.modes[IMAGES] = {"cut_first"}
    dest = download_official(tmp_path / "ham", progress=False)
    assert (dest / "HAM10000_metadata.csv").read_bytes() == META  # the original CSV, not the .tab
    assert sorted(p.stem for p in (dest / "ISIC2018_Task3_Training_Input").glob("ISIC_*.jpg")) == list(IMAGE_IDS)
    with zipfile.ZipFile(io.BytesIO(server.files[IMAGES])) as zf:
        assert (dest / "ISIC2018_Task3_Training_Input" / "ISIC_0024307.jpg").read_bytes() == zf.read(
            "ISIC2018_Task3_Training_Input/ISIC_0024307.jpg")
    assert (dest / "ISIC2018_Task3_Training_GroundTruth" / "ISIC2018_Task3_Training_GroundTruth.csv").is_file()
    assert (dest / "ISIC2018_Task3_Training_LesionGroupings.csv").is_file()
    assert not [p for p in dest.iterdir() if p.suffix in (".zip", ".part") or p.name.endswith(".partial")]
    first, resumed = [r for p, r in server.log if p == IMAGES]  # cut halfway, then resumed
    assert first is None and resumed.startswith("bytes=") and resumed != "bytes=0-"
    assert download_complete(dest) and len(load_metadata(dest)) == 3
    n = len(server.log)
    download_official(dest, progress=False)
    assert len(server.log) == n  # not even the Dataverse API


def test_a_cut_transfer_resumes_from_its_part(server, tmp_path):
    blob = server.files[IMAGES]
    server.modes[IMAGES] = {"cut_first"}
    download_file(server.url + IMAGES, tmp_path / "x.zip", md5=hashlib.md5(blob).hexdigest(), progress=False)
    assert (tmp_path / "x.zip").read_bytes() == blob and not (tmp_path / "x.zip.part").exists()
    ranges = [r for _, r in server.log]
    assert ranges[0] is None and 0 < int(ranges[1][6:-1]) <= len(blob) // 2 and len(ranges) == 2


def test_a_server_ignoring_range_restarts_from_zero(server, tmp_path):
    blob = server.files[IMAGES]
    server.modes[IMAGES] = {"cut_first", "ignore_range"}
    download_file(server.url + IMAGES, tmp_path / "x.zip", md5=hashlib.md5(blob).hexdigest(), progress=False)
    assert (tmp_path / "x.zip").read_bytes() == blob and server.log[1][1] is not None


def test_a_checksum_mismatch_is_refused_and_deleted(server, tmp_path):
    server.modes["/api/access/datafile/42"] = {"corrupt"}
    want, got = hashlib.md5(META).hexdigest(), hashlib.md5(bytes(b ^ 0x5A for b in META)).hexdigest()
    with pytest.raises(DownloadError, match=f"md5 {got} is not the expected {want}"):
        download_file(server.url + "/api/access/datafile/42?format=original", tmp_path / "m.csv", md5=want,
                      progress=False)
    assert list(tmp_path.iterdir()) == []


def test_a_missing_address_falls_back_to_the_next(server, tmp_path):
    urls = [server.url + "/mirror" + IMAGES, server.url + IMAGES]
    download_file(urls, tmp_path / "x.zip", progress=False)
    assert (tmp_path / "x.zip").read_bytes() == server.files[IMAGES]
    assert [p for p, _ in server.log] == ["/mirror" + IMAGES, IMAGES]  # a 404 is not retried


@pytest.mark.parametrize("member", ["evil/../../escaped.txt", "/abs.txt", "C:/windows.txt"])
def test_an_unsafe_zip_member_is_refused_before_anything_is_written(tmp_path, member):
    z = tmp_path / "evil.zip"
    z.write_bytes(_zip({"evil/ok.txt": b"ok", member: b"pwned"}))
    with pytest.raises(UnsafeArchiveError, match="refusing member"):
        safe_extract(z, tmp_path / "out" / "evil")
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "out").exists()


def test_a_corrupt_zip_leaves_no_folder_and_is_deleted(tmp_path):
    payload = bytes(range(256)) * 8
    raw = bytearray(_zip({"X/a.txt": b"a" * 100, "X/b.txt": payload}))
    raw[raw.find(payload) + 100] ^= 0xFF  # a CRC error in the second member, found while unpacking
    (tmp_path / "X.zip").write_bytes(bytes(raw))
    with pytest.raises(DownloadError, match="corrupt zip"):
        safe_extract(tmp_path / "X.zip", tmp_path / "X")
    assert list(tmp_path.iterdir()) == []


def test_offline_is_one_line_naming_how_to_get_the_data(monkeypatch, tmp_path, capsys):
    from metanet_utils.ops import cli

    dead = _dead_url()
    monkeypatch.setattr(dl, "DATAVERSE_SERVER", dead)
    monkeypatch.setattr(dl, "ISIC_BASE_URLS", (dead + "/a", dead + "/b"))
    assert cli.main(["data", "download", "--dest", str(tmp_path / "ham")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    for needed in (dead, "Connection refused", "https://doi.org/10.7910/DVN/DBW86T",
                   "https://challenge.isic-archive.com/data/#2018", "--data-dir"):
        assert needed in err
    (tmp_path / "HAM10000_metadata.csv").write_bytes(META)  # the metadata here: the ISIC addresses are named
    with pytest.raises(DownloadError) as ei:
        download_official(tmp_path, progress=False)
    assert f"{dead}/a/ISIC2018_Task3_Training_GroundTruth.zip" in str(ei.value) and "\n" not in str(ei.value)
    assert f"{dead}/b/ISIC2018_Task3_Training_GroundTruth.zip" in str(ei.value)
    assert not download_complete(tmp_path)


def test_no_room_for_the_images_is_said_before_fetching_them(server, monkeypatch, tmp_path):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**12, 10**12 - 10**6, 10**6))
    monkeypatch.setattr(dl, "IMAGES_ZIP_BYTES", 10**9)
    with pytest.raises(DownloadError, match=r"not enough free disk space .* 2.0 GB needed .* 0.0 GB free"):
        download_official(tmp_path, progress=False)
    assert IMAGES not in [p for p, _ in server.log] and not download_complete(tmp_path)


def test_metadata_only_download_leaves_the_folder_marked_incomplete(server, tmp_path):
    download_official(tmp_path, include_images=False, progress=False)
    assert (tmp_path / "HAM10000_metadata.csv").is_file()
    assert (tmp_path / "ISIC2018_Task3_Training_GroundTruth").is_dir()
    assert IMAGES not in [p for p, _ in server.log] and not download_complete(tmp_path)


def test_two_concurrent_downloads_fetch_each_file_once(server, tmp_path):
    errors = []
    threads = [threading.Thread(target=lambda: _catch(errors, download_official, tmp_path, progress=False))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and download_complete(tmp_path)
    gets = [p for p, _ in server.log]
    assert sorted(set(gets)) == sorted(gets)


def _catch(errors: list, fn, *args, **kwargs) -> None:
    try:
        fn(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 - reported by the test
        errors.append(e)


def test_the_quick_profile_continues_an_interrupted_download(server, monkeypatch, tmp_path):
    """The metadata arrives first, so a download killed during the image zip leaves a folder that looks like
    data; it is marked incomplete, and the quick profile's data step continues it (resuming the .part)."""
    from metanet_utils.config import load_profile
    from metanet_utils.ops.download import locate_data

    monkeypatch.setenv("METANET_ROOT", str(tmp_path))
    monkeypatch.delenv("METANET_DATA_DIR", raising=False)
    own = tmp_path / "data" / "ham10000"
    server.modes[IMAGES] = {"404"}
    with pytest.raises(DownloadError):
        download_official(own, progress=False)
    assert (own / "HAM10000_metadata.csv").is_file() and not download_complete(own)
    half = len(server.files[IMAGES]) // 2
    (own / "ISIC2018_Task3_Training_Input.zip.part").write_bytes(server.files[IMAGES][:half])
    server.modes.clear()
    assert locate_data(load_profile("quick"), "").path == own.resolve() and download_complete(own)
    assert (own / "ISIC2018_Task3_Training_Input" / "ISIC_0024308.jpg").is_file()
    assert server.log[-1] == (IMAGES, f"bytes={half}-")
    n = len(server.log)
    assert locate_data(load_profile("quick"), "").path == own.resolve() and len(server.log) == n
