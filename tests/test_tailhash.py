"""Page digests taken while CRIU writes (runc_grit/checkpoint/tailhash.py): what the
manifest gets must equal a fresh hash of the final files, whatever the writer did."""
import os
import threading
import time

import pytest

from runc_grit.checkpoint import manifest, tailhash
from runc_grit.checkpoint.integrity import CHUNK
from runc_grit.errors import SourceError

PIECE = 4 << 20


def _append(path, total, pause=0.0):
    """Write total bytes to path in PIECE appends, each piece different."""
    with open(path, "wb") as f:
        n = 0
        while n < total:
            k = min(PIECE, total - n)
            f.write(bytes([n // PIECE % 251]) * (k - 8) + n.to_bytes(8, "little"))
            f.flush()
            n += k
            time.sleep(pause)


def _written_during(d, total, name="pages-1.img"):
    tail = tailhash.TailHash(str(d), interval=0.005).start()
    w = threading.Thread(target=_append, args=(str(d / name), total, 0.002))
    w.start()
    w.join()
    return tail.finish()


def test_chunks_hashed_during_the_write_match_a_fresh_hash(tmp_path):
    hashed = _written_during(tmp_path, 3 * CHUNK + CHUNK // 2)
    (dev_ino, chunks), = hashed.values()
    assert len(chunks) == 3   # the three whole chunks, the partial one left to the manifest
    fresh = manifest.list_images(str(tmp_path), digest=True)
    assert manifest.list_images(str(tmp_path), digest=True, hashed=hashed) == fresh
    assert fresh[0]["sha256_chunks"]["digests"][:3] == chunks


def test_a_file_replaced_after_the_dump_is_hashed_again(tmp_path):
    hashed = _written_during(tmp_path, 2 * CHUNK)
    p = tmp_path / "pages-1.img"
    _append(str(tmp_path / "new"), 2 * CHUNK + 5)
    with open(tmp_path / "new", "r+b") as f:
        f.write(b"other content")
    os.rename(tmp_path / "new", p)
    got = manifest.list_images(str(tmp_path), digest=True, hashed=hashed)
    assert got == manifest.list_images(str(tmp_path), digest=True)
    assert got[0]["sha256_chunks"]["digests"][:2] != hashed["pages-1.img"][1]


def test_a_file_rewritten_in_place_is_refused_at_the_restore_never_trusted(tmp_path):
    """CRIU appends; if a writer went back over a hashed chunk, the manifest's digest
    is stale and the restore's check refuses the checkpoint."""
    hashed = _written_during(tmp_path, 2 * CHUNK)
    with open(tmp_path / "pages-1.img", "r+b") as f:
        f.write(b"went back")
    items = manifest.list_images(str(tmp_path), digest=True, hashed=hashed)
    with pytest.raises(SourceError, match="does not match its sha256"):
        manifest.check_digests(str(tmp_path), items, "restore")


def test_symlinks_and_fifos_among_the_pages_are_not_followed_or_opened(tmp_path):
    outside = tmp_path / "outside"
    _append(str(outside), 2 * CHUNK)
    d = tmp_path / "img"
    d.mkdir()
    os.symlink(outside, d / "pages-2.img")
    os.mkfifo(d / "pages-3.img")
    hashed = _written_during(d, CHUNK + 1)
    assert set(hashed) == {"pages-1.img"}


def test_nothing_is_watched_for_a_dir_that_goes_away(tmp_path):
    d = tmp_path / "img"
    d.mkdir()
    tail = tailhash.TailHash(str(d), interval=0.005).start()
    os.rmdir(d)
    time.sleep(0.05)
    assert tail.finish() == {}
