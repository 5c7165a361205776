"""Offline tests of metanet_utils.download against a local HTTP server on 127.0.0.1.

The server serves stand-in files (a small zip of fake ISIC_*.jpg, CSVs, a fake Dataverse
API) and can misbehave on request: cut a transfer halfway, serve corrupt bytes, ignore
Range, answer 503 a few times, or 404.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
import threading
import zipfile
from collections import namedtuple
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from metanet_utils import download as dl
from metanet_utils.download import (
    DownloadError,
    InsufficientDiskSpace,
    UnsafeArchiveError,
    check_free_disk,
    download_file,
    download_official,
    safe_extract,
)

pytestmark = [
    pytest.mark.timeout(60),
    # The stand-in metadata is not the real file: another md5.
    pytest.mark.filterwarnings("ignore:Dataverse serves a HAM10000 metadata file:UserWarning"),
]


@pytest.fixture(autouse=True)
def _stand_in_image_count(monkeypatch):
    """The stand-in image zip holds 3 images where the official one holds 10015."""
    monkeypatch.setattr(dl, "N_IMAGES", len(IMAGE_IDS))

DOI = "doi:10.7910/DVN/DBW86T"
META_ID = 4338392
IMAGE_IDS = ("ISIC_0024306", "ISIC_0024307", "ISIC_0024308")


def _meta_csv() -> bytes:
    rows = [
        "lesion_id,image_id,dx,dx_type,age,sex,localization",
        "HAM_0000118,ISIC_0024306,nv,follow_up,45.0,male,trunk",
        "HAM_0000118,ISIC_0024307,nv,follow_up,45.0,male,trunk",
        "HAM_0002730,ISIC_0024308,mel,histo,60.0,female,face",
    ]
    return ("\n".join(rows) + "\n").encode()


def _zip(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _payloads() -> dict[str, bytes]:
    meta = _meta_csv()
    images = _zip({
        **{f"ISIC2018_Task3_Training_Input/{i}.jpg": b"\xff\xd8\xff\xe0fake" + i.encode() * 50 for i in IMAGE_IDS},
        "ISIC2018_Task3_Training_Input/LICENSE.txt": b"CC BY-NC 4.0\n",
    })
    gt = _zip({"ISIC2018_Task3_Training_GroundTruth/ISIC2018_Task3_Training_GroundTruth.csv":
               b"image,MEL,NV,BCC,AKIEC,BKL,DF,VASC\nISIC_0024306,0.0,1.0,0.0,0.0,0.0,0.0,0.0\n"})
    groupings = b"image,lesion_id,diagnosis_confirm_type\nISIC_0024306,HAM_0000118,follow_up\n"
    api = {
        "status": "OK",
        "data": {"latestVersion": {"files": [
            {"label": "HAM10000_images_part_1.zip",
             "dataFile": {"id": 1, "filename": "HAM10000_images_part_1.zip", "filesize": 10, "md5": "0" * 32}},
            {"label": "HAM10000_metadata.tab",
             "dataFile": {"id": META_ID, "filename": "HAM10000_metadata.tab", "filesize": 999,
                          "originalFileFormat": "text/csv", "originalFileSize": len(meta),
                          "md5": hashlib.md5(meta).hexdigest(),
                          "checksum": {"type": "MD5", "value": hashlib.md5(meta).hexdigest()}}},
        ]}},
    }
    return {
        "/isic/ISIC2018_Task3_Training_Input.zip": images,
        "/isic/ISIC2018_Task3_Training_GroundTruth.zip": gt,
        "/isic/ISIC2018_Task3_Training_LesionGroupings.csv": groupings,
        "/api/datasets/:persistentId/": json.dumps(api).encode(),
        f"/api/access/datafile/{META_ID}?format=original": meta,
        # What Dataverse serves without ?format=original: the ingested tab-separated file.
        f"/api/access/datafile/{META_ID}": meta.replace(b",", b"\t"),
        "/blob.bin": bytes(range(256)) * 400,  # 102400 bytes
    }


Req = namedtuple("Req", "method path range")


class _State:
    def __init__(self) -> None:
        self.files = _payloads()
        self.modes: dict[str, dict] = {}
        self.log: list[Req] = []
        self.lock = threading.Lock()

    def requests(self, path: str | None = None, method: str = "GET") -> list[Req]:
        with self.lock:
            return [r for r in self.log if r.method == method and (path is None or r.path == path)]


class _Handler(BaseHTTPRequestHandler):
    state: _State  # set on the subclass made per server
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def _lookup(self) -> tuple[str, bytes | None]:
        u = urlsplit(self.path)
        q = parse_qs(u.query)
        if u.path == "/api/datasets/:persistentId/":
            return u.path, self.state.files[u.path] if q.get("persistentId") == [DOI] else None
        key = u.path + ("?format=original" if q.get("format") == ["original"] else "")
        return u.path, self.state.files.get(key)

    def _send(self, code: int, body: bytes = b"", headers: dict | None = None, head: bool = False) -> None:
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, str(v))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def do_HEAD(self) -> None:
        path, data = self._lookup()
        with self.state.lock:
            self.state.log.append(Req("HEAD", path, None))
        if data is None:
            self._send(404, head=True)
        else:
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()

    def do_GET(self) -> None:
        path, data = self._lookup()
        rng = self.headers.get("Range")
        with self.state.lock:
            self.state.log.append(Req("GET", path, rng))
            n = sum(1 for r in self.state.log if r.method == "GET" and r.path == path)
            mode = self.state.modes.get(path, {})
        if data is None:
            return self._send(404, b"not found")
        if n <= mode.get("fail503", 0):
            return self._send(503, b"busy", {"Retry-After": "0"})
        if mode.get("corrupt"):
            data = bytes(b ^ 0x5A for b in data)
        start = 0
        if rng and not mode.get("ignore_range"):
            start = int(rng.split("=")[1].split("-")[0])
            if start >= len(data):
                return self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"})
        body = data[start:]
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if mode.get("cut_first") and n == 1:
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


Server = namedtuple("Server", "url state")


@pytest.fixture()
def server():
    state = _State()
    handler = type("Handler", (_Handler,), {"state": state})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield Server(f"http://127.0.0.1:{httpd.server_address[1]}", state)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def _sha256(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


FAST = {"progress": False, "backoff": 0.01}


# --------------------------------------------------------------------------- download_file


def test_resume_after_cut_off(server, tmp_path):
    blob = server.state.files["/blob.bin"]
    server.state.modes["/blob.bin"] = {"cut_first": True}
    out = download_file(server.url + "/blob.bin", tmp_path / "blob.bin", expected_size=len(blob),
                        sha256=_sha256(blob), **FAST)
    assert out.read_bytes() == blob
    gets = server.state.requests("/blob.bin")
    assert len(gets) == 2 and gets[0].range is None
    assert gets[1].range == f"bytes={len(blob) // 2}-"
    assert not (tmp_path / "blob.bin.part").exists()


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    blob = server.state.files["/blob.bin"]
    server.state.modes["/blob.bin"] = {"cut_first": True, "ignore_range": True}
    out = download_file(server.url + "/blob.bin", tmp_path / "blob.bin", md5=hashlib.md5(blob).hexdigest(), **FAST)
    assert out.read_bytes() == blob
    assert server.state.requests("/blob.bin")[1].range is not None


def test_existing_complete_part_gets_416(server, tmp_path):
    blob = server.state.files["/blob.bin"]
    (tmp_path / "blob.bin.part").write_bytes(blob)
    out = download_file(server.url + "/blob.bin", tmp_path / "blob.bin", sha256=_sha256(blob), **FAST)
    assert out.read_bytes() == blob
    assert server.state.requests("/blob.bin")[0].range == f"bytes={len(blob)}-"


def test_corrupt_file_raises_and_leaves_nothing(server, tmp_path):
    blob = server.state.files["/blob.bin"]
    server.state.modes["/blob.bin"] = {"corrupt": True}
    with pytest.raises(DownloadError) as ei:
        download_file(server.url + "/blob.bin", tmp_path / "blob.bin", sha256=_sha256(blob), **FAST)
    msg = str(ei.value)
    assert "blob.bin" in msg and _sha256(blob) in msg and "sha256" in msg
    assert _sha256(bytes(b ^ 0x5A for b in blob)) in msg
    assert not (tmp_path / "blob.bin").exists() and not (tmp_path / "blob.bin.part").exists()


def test_503_then_success(server, tmp_path):
    blob = server.state.files["/blob.bin"]
    server.state.modes["/blob.bin"] = {"fail503": 2}
    out = download_file(server.url + "/blob.bin", tmp_path / "blob.bin", expected_size=len(blob), retries=3, **FAST)
    assert out.read_bytes() == blob
    assert len(server.state.requests("/blob.bin")) == 3


def test_404_falls_back_to_second_url(server, tmp_path):
    blob = server.state.files["/blob.bin"]
    urls = (server.url + "/missing/blob.bin", server.url + "/blob.bin")
    out = download_file(urls, tmp_path / "blob.bin", sha256=_sha256(blob), **FAST)
    assert out.read_bytes() == blob
    assert len(server.state.requests("/missing/blob.bin")) == 1  # 404 is not retried


def test_all_urls_failing_names_them(server, tmp_path):
    urls = (server.url + "/nope/a.bin", server.url + "/nope/b.bin")
    with pytest.raises(DownloadError) as ei:
        download_file(urls, tmp_path / "a.bin", **FAST)
    assert urls[0] in str(ei.value) and urls[1] in str(ei.value) and "404" in str(ei.value)


def test_existing_dest_is_not_downloaded_again(server, tmp_path):
    blob = server.state.files["/blob.bin"]
    (tmp_path / "blob.bin").write_bytes(blob)
    download_file(server.url + "/blob.bin", tmp_path / "blob.bin", sha256=_sha256(blob), **FAST)
    assert server.state.requests() == []


# --------------------------------------------------------------------------- tables, Dataverse


def test_official_table_and_env_override(monkeypatch):
    monkeypatch.delenv("METANET_DOWNLOAD_BASE", raising=False)
    names = [f.name for f in dl.isic_files()]
    assert names == ["ISIC2018_Task3_Training_GroundTruth.zip", "ISIC2018_Task3_Training_LesionGroupings.csv",
                     "ISIC2018_Task3_Training_Input.zip"]
    images = dl.isic_files()[2]
    assert images.unzip and len(images.urls) == 2 and images.size is None and images.sha256 is None
    assert images.urls[1] == "https://isic-challenge-data.s3.amazonaws.com/2018/ISIC2018_Task3_Training_Input.zip"
    monkeypatch.setenv("METANET_DOWNLOAD_BASE", "http://127.0.0.1:1/x, http://127.0.0.1:1/y/")
    assert dl.isic_files()[1].urls == ("http://127.0.0.1:1/x/ISIC2018_Task3_Training_LesionGroupings.csv",
                                       "http://127.0.0.1:1/y/ISIC2018_Task3_Training_LesionGroupings.csv")


def test_resolve_dataverse_tabular_file(server, tmp_path):
    meta = server.state.files[f"/api/access/datafile/{META_ID}?format=original"]
    rf = dl.resolve_dataverse_file(server=server.url)
    assert rf.urls == (f"{server.url}/api/access/datafile/{META_ID}?format=original",)
    assert rf.size == len(meta) and rf.md5 == hashlib.md5(meta).hexdigest() and rf.filename == "HAM10000_metadata.csv"
    # The ingested .tab (what the plain access URL serves) fails the CSV check and is not kept.
    with pytest.raises(DownloadError, match="not the expected CSV"):
        download_file(f"{server.url}/api/access/datafile/{META_ID}", tmp_path / "m.csv", progress=False,
                      verify=lambda p: dl._check_csv_header(p, dl.METADATA_COLUMNS, "m.csv"))
    assert not list(tmp_path.glob("m.csv*"))
    with pytest.raises(DownloadError, match="no file named"):
        dl.resolve_dataverse_file("nothing_like_this", server=server.url)


# --------------------------------------------------------------------------- disk, unzip


def _fake_usage(free: int):
    usage = namedtuple("usage", "total used free")
    return lambda path: usage(10 * free + 1, 9 * free, free)


def test_free_disk_check_message(monkeypatch, tmp_path):
    monkeypatch.setattr(shutil, "disk_usage", _fake_usage(1_000_000_000))
    check_free_disk(tmp_path / "not" / "yet", 500_000_000)
    with pytest.raises(InsufficientDiskSpace) as ei:
        check_free_disk(tmp_path / "not" / "yet", 5_200_000_000)
    assert "5.20 GB" in str(ei.value) and "1.00 GB" in str(ei.value)


def test_download_official_checks_disk_before_fetching(server, monkeypatch, tmp_path):
    monkeypatch.setattr(shutil, "disk_usage", _fake_usage(100))
    with pytest.raises(InsufficientDiskSpace):
        download_official(tmp_path / "d", base_urls=server.url + "/isic", dataverse_server=server.url, **FAST)
    assert [r for r in server.state.requests() if "/api/datasets" not in r.path] == []
    assert not list((tmp_path / "d").glob("*.zip*")) and not list((tmp_path / "d").glob("*.csv*"))


def test_unzip_refuses_zip_slip(tmp_path):
    z = tmp_path / "evil.zip"
    z.write_bytes(_zip({"evil/ok.txt": b"ok", "evil/../../escaped.txt": b"pwned"}))
    with pytest.raises(UnsafeArchiveError, match="escaped"):
        safe_extract(z, tmp_path / "out" / "evil")
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "out" / "evil").exists()
    assert not list((tmp_path / "out").glob(".*stage*"))
    z.write_bytes(_zip({"/abs.txt": b"x"}))
    with pytest.raises(UnsafeArchiveError):
        safe_extract(z, tmp_path / "out" / "evil")


def test_unzip_is_atomic_on_corrupt_member(tmp_path):
    payload = bytes(range(256)) * 8
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("X/a.txt", b"a" * 100)
        zf.writestr("X/b.txt", payload)
    raw = bytearray(buf.getvalue())
    raw[raw.find(payload) + 100] ^= 0xFF  # CRC error in the second member
    z = tmp_path / "X.zip"
    z.write_bytes(bytes(raw))
    with pytest.raises(DownloadError, match="corrupt"):
        safe_extract(z, tmp_path / "X")
    assert not (tmp_path / "X").exists() and not list(tmp_path.glob(".X.stage*"))


# --------------------------------------------------------------------------- the whole thing


def test_download_official_layout_and_second_call_idle(server, tmp_path):
    dest = tmp_path / "ham"
    server.state.modes["/isic/ISIC2018_Task3_Training_Input.zip"] = {"cut_first": True}
    with pytest.warns(UserWarning, match="md5"):  # the stand-in metadata is not the real file
        out = download_official(dest, base_urls=[server.url + "/missing", server.url + "/isic"],
                                dataverse_server=server.url, **FAST)
    assert out == dest
    assert (dest / "HAM10000_metadata.csv").read_bytes() == server.state.files[
        f"/api/access/datafile/{META_ID}?format=original"]
    assert sorted(p.stem for p in (dest / "ISIC2018_Task3_Training_Input").glob("ISIC_*.jpg")) == list(IMAGE_IDS)
    gt = dest / "ISIC2018_Task3_Training_GroundTruth" / "ISIC2018_Task3_Training_GroundTruth.csv"
    assert next(csv.reader(gt.open()))[:2] == ["image", "MEL"]
    assert (dest / "ISIC2018_Task3_Training_LesionGroupings.csv").is_file()
    assert not list(dest.glob("*.zip")) and not list(dest.glob("*.part")) and not list(dest.glob(".*stage*"))
    ranged = [r for r in server.state.requests("/isic/ISIC2018_Task3_Training_Input.zip") if r.range]
    assert len(ranged) == 1  # resumed after the cut-off

    n = len(server.state.log)
    download_official(dest, base_urls=server.url + "/isic", dataverse_server=server.url, **FAST)
    assert len(server.state.log) == n  # nothing fetched, not even the Dataverse API

    from metanet_utils.data import load_metadata

    df = load_metadata(dest)
    assert len(df) == 3


def test_download_official_env_override_and_no_images(server, monkeypatch, tmp_path):
    monkeypatch.setenv("METANET_DOWNLOAD_BASE", server.url + "/isic")
    monkeypatch.setenv("METANET_DATAVERSE_SERVER", server.url)
    with pytest.warns(UserWarning):
        download_official(tmp_path, include_images=False, **FAST)
    assert (tmp_path / "HAM10000_metadata.csv").is_file()
    assert not (tmp_path / "ISIC2018_Task3_Training_Input").exists()
    assert server.state.requests("/isic/ISIC2018_Task3_Training_Input.zip") == []


def test_no_network_message(monkeypatch, tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setattr(dl, "TIMEOUT", (1.0, 1.0))
    with pytest.raises(DownloadError) as ei:
        download_official(tmp_path, base_urls=dead, dataverse_server=dead, **FAST)
    msg = str(ei.value)
    print(msg)
    assert dead in msg and "10.7910/DVN/DBW86T" in msg and "--data-dir" in msg and "data/ham10000" in msg
    assert "challenge.isic-archive.com" in msg
    # With the metadata already here, the ISIC addresses are tried and listed.
    (tmp_path / "HAM10000_metadata.csv").write_bytes(_meta_csv())
    with pytest.raises(DownloadError) as ei:
        download_official(tmp_path, base_urls=[dead + "/a", dead + "/b"], dataverse_server=dead, **FAST)
    msg = str(ei.value)
    print(msg)
    assert f"{dead}/a/ISIC2018_Task3_Training_GroundTruth.zip" in msg
    assert f"{dead}/b/ISIC2018_Task3_Training_GroundTruth.zip" in msg and "--data-dir" in msg


def test_corrupt_zip_from_server_is_rejected(server, tmp_path):
    server.state.modes["/isic/ISIC2018_Task3_Training_GroundTruth.zip"] = {"corrupt": True}
    (tmp_path / "HAM10000_metadata.csv").write_bytes(_meta_csv())
    with pytest.raises(DownloadError, match="zip"):
        download_official(tmp_path, include_images=False, base_urls=server.url + "/isic",
                          dataverse_server=server.url, **FAST)
    assert not list(tmp_path.glob("*.zip")) and not list(tmp_path.glob("*.part"))
    assert not (tmp_path / "ISIC2018_Task3_Training_GroundTruth").exists()


def test_an_image_archive_with_too_few_images_is_refused_and_fetched_again(server, monkeypatch, tmp_path):
    monkeypatch.setattr(dl, "N_IMAGES", len(IMAGE_IDS) + 1)
    (tmp_path / "HAM10000_metadata.csv").write_bytes(_meta_csv())
    with pytest.raises(DownloadError, match=r"holds 3 files ISIC_\*\.jpg, expected 4; removed"):
        download_official(tmp_path, base_urls=server.url + "/isic", dataverse_server=server.url, **FAST)
    assert not (tmp_path / "ISIC2018_Task3_Training_Input").exists() and not list(tmp_path.glob("ISIC2018_Task3_Training_Input.zip*"))
    assert not dl.download_complete(tmp_path, base_urls=server.url + "/isic")


def test_quick_profile_finishes_an_interrupted_download(server, monkeypatch, tmp_path):
    """The metadata arrives first: a download killed during the image zip leaves a folder that looks like
    data. The quick profile's data step sees it is unfinished and continues it (resuming the .part)."""
    from metanet_utils.config import load_profile
    from metanet_utils.data import locate_data

    monkeypatch.setenv("METANET_ROOT", str(tmp_path))
    monkeypatch.delenv("METANET_DATA_DIR", raising=False)
    monkeypatch.setenv("METANET_DOWNLOAD_BASE", server.url + "/isic")
    monkeypatch.setenv("METANET_DATAVERSE_SERVER", server.url)
    own = tmp_path / "data" / "ham10000"
    own.mkdir(parents=True)
    (own / "HAM10000_metadata.csv").write_bytes(_meta_csv())
    zip_bytes = server.state.files["/isic/ISIC2018_Task3_Training_Input.zip"]
    (own / "ISIC2018_Task3_Training_Input.zip.part").write_bytes(zip_bytes[: len(zip_bytes) // 2])
    assert not dl.download_complete(own)
    loc = locate_data(load_profile("quick"), "")
    assert loc.path == own.resolve() and dl.download_complete(own)
    assert sorted(p.stem for p in (own / "ISIC2018_Task3_Training_Input").glob("ISIC_*.jpg")) == list(IMAGE_IDS)
    ranged = [r for r in server.state.requests("/isic/ISIC2018_Task3_Training_Input.zip") if r.range]
    assert ranged and ranged[0].range.startswith(f"bytes={len(zip_bytes) // 2}-")
    n = len(server.state.log)
    assert locate_data(load_profile("quick"), "").path == own.resolve() and len(server.state.log) == n
    # a folder the user gave is theirs: never downloaded into
    assert locate_data(load_profile("quick"), str(own)).path == own.resolve() and len(server.state.log) == n


def test_download_command_without_network_says_why_and_exits_1(monkeypatch, tmp_path, capsys):
    import socket

    from metanet_utils import cli

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setattr(dl, "TIMEOUT", (1.0, 1.0))
    monkeypatch.setenv("METANET_DOWNLOAD_BASE", dead)
    monkeypatch.setenv("METANET_DATAVERSE_SERVER", dead)
    monkeypatch.setattr(dl, "download_official", lambda *a, **k: download_official(*a, **{**k, **FAST}))
    rc = cli.main(["data", "download", "--dest", str(tmp_path / "ham")])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("error: ") and "Traceback" not in err
    assert dead in err and "10.7910/DVN/DBW86T" in err  # where it tried, and how to get the files by hand
