#!/usr/bin/env python3
"""Merge runc-grit's runtime tables into a node's containerd config, and take them out again.

Not through ``imports``: containerd 1.6/1.7 merge an imported file plugin by plugin, so a
drop-in that names the CRI plugin *replaces* the node's whole CRI section (its sandbox image,
its runc options, ...); `containerd config dump` shows them gone. Instead the tables are
appended to config.toml between two marker lines, and nothing else in the file changes
(comments, order, settings). TOML lets a sub-table be defined anywhere, once.

  containerd_merge.py add    CONFIG TABLES_FILE RECORD_DIR   (idempotent)
  containerd_merge.py remove CONFIG RECORD_DIR
  containerd_merge.py version CONFIG     prints the file's config version, or "none" when
                                         there is no file or nothing in it
RECORD_DIR keeps a copy of the config as found. Standard library only: this runs before
runc-grit's venv exists.
"""
import os
import re
import sys

BEGIN = "# BEGIN runc-grit: runtime handler grit (install/install.sh; uninstall.sh removes it)"
END = "# END runc-grit"
ABSENT = "absent\n"  # the backup's content when there was no config.toml


def write_if_changed(path, text):
    """Atomic, and only when the content changes (a second install changes nothing)."""
    try:
        with open(path) as f:
            if f.read() == text:
                return False
    except FileNotFoundError:
        pass
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".runc-grit.tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return True


def config_version(text):
    head = text[:m.start()] if (m := re.search(r"^\s*\[", text, re.M)) else text
    v = re.search(r"^version\s*=\s*(\d+)", head, re.M)
    return int(v.group(1)) if v else 1


def tables(dropin_text):
    """The drop-in file without its `version` line: the tables to merge."""
    return re.sub(r"^version\s*=.*\n", "", dropin_text, flags=re.M).strip("\n") + "\n"


def remove_block(text):
    """text without runc-grit's block (and the blank line before it). Pure."""
    pat = re.compile(r"\n?%s\n.*?^%s\n?" % (re.escape(BEGIN), re.escape(END)), re.M | re.S)
    return pat.sub("", text)


def add_block(text, block, version):
    """text with runc-grit's block at its end (replacing an older one). Pure."""
    base = remove_block(text)
    if not base.strip():
        base = "version = %d\n" % version
    if not base.endswith("\n"):
        base += "\n"
    return "%s\n%s\n%s%s\n" % (base, BEGIN, block, END)


def _read(path):
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return None


def add(config, dropin, record_dir):
    backup = os.path.join(record_dir, "containerd-config.toml.orig")
    text = _read(config)
    if not os.path.exists(backup):
        write_if_changed(backup, ABSENT if text is None else text)
    with open(dropin) as f:
        drop = f.read()
    want = config_version(drop)
    have = config_version(text) if text and text.strip() else want
    if have != want:
        raise SystemExit("%s is config version %d; %s is for version %d" % (
            config, have, os.path.basename(dropin), want))
    return write_if_changed(config, add_block(text or "", tables(drop), want))


def remove(config, record_dir):
    backup = os.path.join(record_dir, "containerd-config.toml.orig")
    text, orig = _read(config), _read(backup)
    if text is not None:
        rest = remove_block(text)
        if orig == ABSENT and re.fullmatch(r"\s*version\s*=\s*\d+\s*", rest):
            os.unlink(config)  # only what install.sh wrote was there
        else:
            write_if_changed(config, rest)
    if orig is not None:
        os.unlink(backup)
    return text is not None


def main(argv):
    if len(argv) == 4 and argv[0] == "add":
        changed = add(argv[1], argv[2], argv[3])
        print("containerd config %s: %s" % (argv[1], "runtime grit added" if changed
                                             else "unchanged"))
        return 0
    if len(argv) == 2 and argv[0] == "version":
        text = _read(argv[1])
        print(config_version(text) if text and text.strip() else "none")
        return 0
    if len(argv) == 3 and argv[0] == "remove":
        remove(argv[1], argv[2])
        print("containerd config %s: runtime grit removed" % argv[1])
        return 0
    sys.stderr.write(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
