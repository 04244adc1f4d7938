"""What a runtime call that may run CRIU runs with: the shared CRIU config its bundle points at
(criuconf; the spec changed through oci.modifiers), the environment CRIU's action script finds
the container's state in, and the CRIU binary first on PATH."""
import hashlib
import json
import os
import sys

from runc_grit import fastconf
from runc_grit.node import config as _config
from runc_grit.node import procs
from runc_grit.oci import modifiers
from runc_grit.oci import spec as _spec
from runc_grit.runtimes import criuconf

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def criu_config(conf, user, cgroups_mode=None, extra=()):
    """The shared CRIU config's content: the action script, the configured options plus
    extra, the container's own config (user) and the cgroup mode of restores."""
    return criuconf.content(_config.hook_script(conf), list(conf.criu_options) + list(extra),
                            user, conf.restore_cgroups if cgroups_mode is None else cgroups_mode)


def point_spec(req, cgroups_mode=None, extra=()):
    """Point the bundle's config.json at the shared CRIU config (criuconf). The change is
    the same for every container of the bundle, so config.json is written at most once, and
    never when it already names that config. A bundle runc-grit cannot write keeps working
    as with runc, without the action script (logged). extra: lines a restore from one
    particular image needs (Runtime.restore_criu_options)."""
    conf, spec = req.conf, req.spec
    user = criuconf.user_config(_spec.annotations(spec), conf.state_dir)
    if cgroups_mode is None:
        cgroups_mode = criuconf.cgroups_mode_for(conf.restore_cgroups, spec)
    path = criuconf.ensure(conf.state_dir, criu_config(conf, user, cgroups_mode, extra))
    changes = modifiers.for_criu(spec, path, user, criuconf.USER_ANNOTATION)
    if not changes:
        return
    modifiers.apply(spec, changes)
    try:
        _spec.save(req.bundle, spec, req.spec_name)
    except OSError as e:
        req.log.warning("bundle %s: cannot write %s (%s); the container runs without "
                        "runc-grit's CRIU action script" % (req.bundle, req.spec_name, e.strerror))


def hook_env(conf, st, extra=None):
    """Environment for the runtime, so CRIU's action script finds this container's state.

    The hook's Python starts without site (-S) and gets this process's import path and its
    already validated config as JSON: no YAML parser, no schema validation, no .pth scan in
    the dump's critical path."""
    env = dict(os.environ)
    env["RUNC_GRIT_STATE"] = st.dir
    if conf.path:
        env["RUNC_GRIT_CONFIG"] = conf.path
    env["RUNC_GRIT_PYTHON"] = sys.executable
    env["RUNC_GRIT_PYTHONPATH"] = procs.import_path()
    env["RUNC_GRIT_HOOK_CONF"] = json.dumps(conf.as_dict())
    if conf.criu and conf.criu != "criu":
        env["PATH"] = criu_dir(conf) + os.pathsep + env.get("PATH", DEFAULT_PATH)
    if extra:
        env.update(extra)
    return env


def criu_dir(conf):
    """A dir holding only `criu`, the configured CRIU, to put first on the runtime's PATH.
    runc >= 1.2 runs the criu it finds on PATH whatever --criu says (1.3 warns on stderr,
    which on a restore-on-create is the container's; 1.4 refuses the flag), and runc 1.1 and
    crun look there too when no --criu is given: so runc-grit never passes --criu."""
    target = os.path.abspath(fastconf.which(conf.criu) or conf.criu)
    d = os.path.join(conf.state_dir, "criu-bin",
                     hashlib.sha256(target.encode()).hexdigest()[:16])
    link = os.path.join(d, "criu")
    if os.path.islink(link) and os.readlink(link) == target:
        return d
    os.makedirs(d, mode=0o755, exist_ok=True)
    tmp = "%s.%d" % (link, os.getpid())
    os.symlink(target, tmp)
    os.replace(tmp, link)
    return d


def criu_version(conf):
    """The configured CRIU's version (cached under the state dir)."""
    path = fastconf.which(conf.criu) or conf.criu
    return procs.version_of(path, cache_dir=conf.state_dir)
