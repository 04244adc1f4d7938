"""grit-manifest.json: the commit marker of a checkpoint image dir.

It is written last, atomically, only after the runtime's checkpoint succeeded. A restore
refuses an image dir whose manifest is missing (unless accept_raw_criu) or invalid, or whose
files do not match it.
"""
import json
import os
import platform
import time

from runc_grit.checkpoint.integrity import CHUNK, digests
from runc_grit.checkpoint import tenant
from runc_grit.errors import CheckpointError, SourceError
from runc_grit import fsutil
from runc_grit.node.config import load_schema

NAME = "grit-manifest.json"
# Files in an image dir that are not CRIU images and not listed in the manifest.
NOT_IMAGES = frozenset((NAME,))


def now_rfc3339():
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + ".%03dZ" % int((t % 1) * 1000)


def list_images(image_dir, digest=False, hashed=None):
    """Every image file with its size, and its digests when asked. hashed: what
    tailhash.TailHash took during the dump ({name: ((st_dev, st_ino), chunk digests)}), used
    for a file that is still that inode."""
    out, paths, known = [], [], {}
    for name in sorted(os.listdir(image_dir)):
        if name in NOT_IMAGES or name.startswith("."):
            continue
        p = os.path.join(image_dir, name)
        st = os.lstat(p)
        if not _is_regular(st):
            continue
        out.append({"name": name, "size": st.st_size})
        paths.append(p)
        ident, chunks = (hashed or {}).get(name, (None, None))
        if chunks and ident == (st.st_dev, st.st_ino):
            known[p] = chunks
    if digest:
        sums = digests({p: CHUNK for p in paths}, known=known)
        for item, p in zip(out, paths):
            if isinstance(sums[p], list):  # a large file: the sha256 of each CHUNK bytes
                item["sha256_chunks"] = {"size": CHUNK, "digests": sums[p]}
            else:
                item["sha256"] = sums[p]
    return out


def _is_regular(st):
    import stat
    return stat.S_ISREG(st.st_mode)


def build(container_id, annotations, bundle, runtime, criu, images, timings,
          leave_running=False, gpu=None):
    m = {
        "format": "runc-grit-checkpoint",
        "format_version": 1,
        "created": now_rfc3339(),
        "container": {"id": container_id, "bundle": bundle, "annotations": dict(annotations),
                      "leave_running": bool(leave_running)},
        # whose it is (signed with the rest): a restore into another tenant is refused
        "source": tenant.of(annotations),
        "runtime": runtime,
        "criu": criu,
        "node": {"hostname": platform.node(), "kernel": platform.release(),
                 "arch": platform.machine()},
        "images": images,
        "timings": {k: round(v, 6) for k, v in timings.items()},
    }
    if gpu:
        m["gpu"] = gpu
    # not validated here (jsonschema costs ~100 ms per checkpoint): every reader validates
    # (load), and the tests validate what build() writes
    return m


def digests_wanted(conf):
    """List every image's sha256: asked for, or needed because the manifest is signed."""
    return conf.verify == "digest" or bool(conf.signing_key)


def save_spec(bundle, image_dir):
    """spec.dump: the container's OCI spec, as Podman and checkpointctl keep it. The bundle's
    config.json is root's (read by path); the copy goes through the image dir's descriptor
    under a fresh name and is renamed into place: a planted spec.dump symlink is replaced,
    never written through."""
    if bundle:
        try:
            with open(os.path.join(bundle, "config.json"), "rb") as f:
                data = f.read()
            dfd = fsutil.open_dir(image_dir)
            try:
                fsutil.write_atomic_at(dfd, "spec.dump", data)
            finally:
                os.close(dfd)
        except OSError:
            pass


def commit(image_dir, manifest, conf):
    """Signed (with the node's signing_key, if any; unsigned without one), then written: the
    checkpoint is complete."""
    from runc_grit.checkpoint import integrity
    integrity.sign_manifest(manifest, conf)
    write(image_dir, manifest)


def write(image_dir, manifest):
    """grit-manifest.json, replaced atomically through the image dir's descriptor (the dir
    itself no symlink): a fresh O_EXCL|O_NOFOLLOW temp file renamed over the name, so a
    planted symlink at the name or at a temp name is never written through."""
    dfd = fsutil.open_dir(image_dir)
    try:
        fsutil.write_json_atomic_at(dfd, NAME, manifest, indent=1)
    finally:
        os.close(dfd)


def prepare_dir(image_dir, what):
    """The image dir of a new dump: created (0700) if needed, and refused if it is a symlink
    (runc would follow it); then, through its descriptor, its old manifest removed and every
    symlink or hard-linked file in it (CRIU opens its images by name and would write through
    them). GritError (nothing was done to the container) when that fails."""
    if os.path.islink(image_dir):
        raise CheckpointError("%s: image dir %s is a symlink; refused, the container was not "
                        "checkpointed and keeps running" % (what, image_dir))
    try:
        os.makedirs(image_dir, mode=0o700, exist_ok=True)
        dfd = fsutil.open_dir(image_dir)  # O_NOFOLLOW: a symlink swapped in meanwhile fails
        try:
            fsutil.remove_links(dfd)
            _unlink_manifest(dfd)
        finally:
            os.close(dfd)
    except OSError as e:
        raise CheckpointError("%s: image dir %s: %s; the container was not checkpointed and keeps "
                        "running" % (what, image_dir, e.strerror)) from None


def remove(image_dir):
    """Uncommit an image dir: its manifest unlinked through the dir's descriptor. An image
    dir that is gone, or is now a symlink (never followed), holds no manifest of ours."""
    import errno
    try:
        dfd = fsutil.open_dir(image_dir)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
            return
        raise
    try:
        _unlink_manifest(dfd)
    finally:
        os.close(dfd)


def _unlink_manifest(dfd):
    try:
        os.unlink(NAME, dir_fd=dfd)
    except FileNotFoundError:
        pass


def validate(m, where):
    import jsonschema
    schema = load_schema("manifest.schema.json")
    err = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(m))
    if err is not None:
        at = "/".join(str(p) for p in err.absolute_path) or "(top level)"
        raise SourceError("%s: invalid manifest at %s: %s" % (where, at, err.message))


def load(image_dir):
    """The manifest of image_dir, or None if there is none. Raises on an invalid one."""
    path = os.path.join(image_dir, NAME)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if not _is_regular(st):
        raise SourceError("restore source %s: %s is not a regular file" % (image_dir, NAME))
    if st.st_size > 16 << 20:
        raise SourceError("restore source %s: %s is too large" % (image_dir, NAME))
    try:
        with open(path, "rb") as f:
            m = json.loads(f.read())
    except (OSError, ValueError) as e:
        raise SourceError("restore source %s: unreadable %s: %s" % (image_dir, NAME, e)) from None
    validate(m, "restore source %s" % image_dir)
    return m


def check_files(image_dir, m, digest=False, where=None, defer=None):
    """Every image the manifest lists is there, a regular file, of the listed size (and hash).
    where: how errors name the checkpoint (default: "restore source IMAGE_DIR"). defer: a
    list that takes the page images' items (is_page_data) instead of hashing them now: the
    caller checks them with check_digests while the runtime restores, and gates the resume
    on the result (checkpoint.pagecheck)."""
    where = where or "restore source %s" % image_dir
    for item in m["images"]:
        p = os.path.join(image_dir, item["name"])
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            raise SourceError("%s: image %s listed in the manifest is missing"
                            % (where, item["name"])) from None
        if not _is_regular(st):
            raise SourceError("%s: image %s is not a regular file"
                            % (where, item["name"]))
        if st.st_size != item["size"]:
            raise SourceError("%s: image %s has %d bytes, the manifest says %d"
                            % (where, item["name"], st.st_size, item["size"]))
    if digest:
        listed = [i for i in m["images"] if has_digest(i)]
        if defer is not None:
            defer += [i for i in listed if is_page_data(i["name"])]
            listed = [i for i in listed if not is_page_data(i["name"])]
        check_digests(image_dir, listed, where)


def is_page_data(name):
    """CRIU's page contents (pages-N.img): bytes copied into the restored memory, never
    parsed by CRIU (pagemap-N.img, which says where they go, is)."""
    return name.startswith("pages-") and name.endswith(".img")


def check_digests(image_dir, items, where):
    """Each listed item's content (whole, or in chunks) against its digest; SourceError."""
    paths = {os.path.join(image_dir, i["name"]): (i.get("sha256_chunks") or {}).get("size")
             for i in items}
    sums = digests(paths)
    for item in items:
        want = item.get("sha256") or item["sha256_chunks"]["digests"]
        if sums[os.path.join(image_dir, item["name"])] != want:
            raise SourceError("%s: image %s does not match its sha256 in the "
                            "manifest" % (where, item["name"]))


def has_digest(item):
    """Does the manifest list this image's content (whole, or in chunks)?"""
    return "sha256" in item or "sha256_chunks" in item
