"""config.yaml loading: expansion, re-typing, validation errors with positions (cli.md §5)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from pyiii.engine.config import (
    STARTER_CONFIG,
    ConfigError,
    Listener,
    RestartPolicy,
    core_scalar,
    default_config,
    expand_text,
    load_config,
    parse_config,
    write_starter,
)
from pyiii.engine.firstparty import ALIASES, DEFAULT_SET, canonical_name


def load(text: str, env: dict[str, str] | None = None, tmp: Path | None = None):
    return parse_config(textwrap.dedent(text), "/proj/config.yaml", env or {})


def error(text: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load(text, env)
    return str(info.value)


# --------------------------------------------------------------------------- starter / default

def test_starter_text_is_exactly_the_spec() -> None:
    assert STARTER_CONFIG == (
        "# iii project configuration: the workers this engine runs.\n"
        "# Add workers with `iii worker add <name>`; a running engine reloads this file on save.\n"
        "# Values may read environment variables: ${VAR} or ${VAR:default}.\n"
        "workers:\n"
        "  - name: iii-http\n"
        "  - name: iii-stream\n"
        "  - name: iii-state\n"
        "  - name: iii-pubsub\n"
        "  - name: iii-cron\n"
        "  - name: iii-queue\n"
    )


def test_write_starter_creates_once(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    assert write_starter(path) is True
    assert path.read_text() == STARTER_CONFIG
    path.write_text("workers: []\n")
    assert write_starter(path) is False
    assert path.read_text() == "workers: []\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]


def test_starter_loads_as_default_set(tmp_path: Path) -> None:
    write_starter(tmp_path / "config.yaml")
    cfg = load_config(tmp_path / "config.yaml", {})
    assert [w.name for w in cfg.workers] == list(DEFAULT_SET)
    assert all(w.kind == "builtin" and w.isolation == "in-process" for w in cfg.workers)
    assert cfg.project_dir == tmp_path.absolute()
    assert cfg.config_path == (tmp_path / "config.yaml").absolute()
    assert cfg.listeners() == [Listener()]


def test_default_config_ports_and_memory_adapters() -> None:
    cfg = default_config({})
    names = [w.name for w in cfg.workers]
    assert [n for n in names if n != "iii-worker-manager"] == list(DEFAULT_SET)
    assert cfg.config_path is None
    assert cfg.listeners()[0].port == 49134
    assert cfg.worker("iii-http").config["port"] == 3111
    assert cfg.worker("iii-stream").config["port"] == 3112
    for name in ("iii-state", "iii-stream", "iii-queue", "iii-cron", "iii-pubsub"):
        assert cfg.worker(name).config["adapter"] == "memory"


def test_default_config_reads_port_variables() -> None:
    cfg = default_config({"III_ENGINE_PORT": "0", "III_HTTP_PORT": "0", "III_STREAM_PORT": "4000"})
    assert cfg.listeners()[0].port == 0
    assert cfg.worker("http").config["port"] == 0
    assert cfg.worker("stream").config["port"] == 4000


# --------------------------------------------------------------------------- expansion

def test_expand_text_rules() -> None:
    env = {"A": "x", "EMPTY": ""}
    assert expand_text("${A}", env) == "x"
    assert expand_text("${B:def}", env) == "def"
    assert expand_text("${EMPTY:def}", env) == ""  # set but empty stays empty
    assert expand_text("${B:}", env) == ""
    assert expand_text("a-${A}-${B:1}-$${A}", env) == "a-x-1-${A}"
    assert expand_text("$$ $x ${1A}", env) == "$$ $x ${1A}"


@pytest.mark.parametrize("text,value", [
    ("3111", 3111), ("-5", -5), ("0x1F", 31), ("0o17", 15), ("2.5", 2.5), ("1e3", 1000.0),
    ("true", True), ("False", False), ("null", None), ("~", None), ("", None), ("yes", "yes"),
    ("007", 7), ("hello", "hello"),
])
def test_core_scalar(text: str, value: object) -> None:
    assert core_scalar(text) == value and type(core_scalar(text)) is type(value)


def test_plain_single_reference_is_retyped_quoted_and_mixed_stay_strings() -> None:
    cfg = load("""\
        workers:
          - name: iii-http
            config:
              port: ${P:3111}
              debug: ${D:false}
              quoted: "${P:3111}"
              single: '${D:false}'
              mixed: x${P:1}
              literal: $${HOME}
              empty: ${E}
              list: [a, "${E}b"]
              nested:
                n: ${N}
        """, {"E": "", "N": "2.5"})
    c = cfg.workers[0].config
    assert c == {"port": 3111, "debug": False, "quoted": "3111", "single": "false", "mixed": "x1",
                 "literal": "${HOME}", "empty": None, "list": ["a", "b"], "nested": {"n": 2.5}}
    assert type(c["quoted"]) is str and type(c) is dict and type(c["list"]) is list


def test_expansion_never_touches_keys_and_block_scalars_stay_strings() -> None:
    cfg = load("""\
        workers:
          - name: svc
            worker_path: ./svc
            config:
              ${K}: 1
              text: |
                ${P:5}
        """)
    assert cfg.workers[0].config == {"${K}": 1, "text": "5\n"}


def test_unset_variable_error_has_line_and_column() -> None:
    msg = error("""\
        workers:
          - name: iii-http
            config:
              port: ${MISSING_PORT}
        """)
    assert msg == "config.yaml:4:13: environment variable MISSING_PORT is not set and has no default"


def test_unset_variable_column_points_at_reference_inside_text() -> None:
    msg = error("""\
        workers:
          - name: svc
            worker_path: ./svc
            config:
              url: http://${HOST}/x
        """)
    assert msg.startswith("config.yaml:5:19: environment variable HOST")


def test_env_value_from_variable_is_a_string_when_quoted() -> None:
    cfg = load("""\
        workers:
          - name: svc
            worker_path: ./svc
            env:
              PORT: "${P:8080}"
        """)
    assert cfg.workers[0].env == {"PORT": "8080"}


# --------------------------------------------------------------------------- validation

def test_unknown_top_level_key_did_you_mean() -> None:
    assert error("registries: []\n\nworker: []\n") == \
        "config.yaml:3:1: unknown key 'worker' (did you mean 'workers'?)"


def test_unknown_entry_key_did_you_mean() -> None:
    msg = error("""\
        workers:
          - name: svc
            imgae: acme/svc:1
        """)
    assert msg == "config.yaml:3:5: unknown key 'imgae' (did you mean 'image'?)"


def test_env_values_must_be_strings() -> None:
    msg = error("""\
        workers:
          - name: svc
            worker_path: ./svc
            env:
              PORT: 8080
        """)
    assert msg == 'config.yaml:5:13: env.PORT must be a string; quote it: PORT: "8080"'


@pytest.mark.parametrize("body,fragment", [
    ("  - name: x\n    image: a/b\n    worker_path: ./x\n", "'image' and 'worker_path' cannot both be set"),
    ("  - name: x\n    image: a/b\n    version: ^1.0.0\n", "'version' cannot be combined with 'image'"),
    ("  - name: x\n    worker_path: ./x\n    version: 1.0.0\n", "'version' cannot be combined with 'worker_path'"),
    ("  - name: svc\n    isolation: in-process\n", "in-process is only for first-party workers"),
    ("  - name: iii-observability\n    isolation: process\n", "always runs in-process"),
    ("  - name: iii-worker-manager\n    isolation: namespace\n", "always runs in-process"),
    ("  - name: svc\n    isolation: vm\n", "isolation must be one of auto, in-process, process, namespace"),
    ("  - name: Svc\n", "invalid worker name 'Svc'"),
    ("  - name: a..b\n", "invalid worker name 'a..b'"),
    ("  - version: 1.0.0\n", "workers[0]: missing required key 'name'"),
    ("  - hello\n", "workers[0] must be a mapping"),
    ("  - name: svc\n    enabled: 1\n", "enabled must be true or false"),
    ("  - name: svc\n    stop_timeout_ms: -1\n", "stop_timeout_ms must be at least 0"),
    ("  - name: svc\n    restart: sometimes\n", "restart must be one of always, on-failure, never"),
    ("  - name: svc\n    restart: {polcy: always}\n", "unknown key 'polcy' in restart (did you mean 'policy'?)"),
    ("  - name: svc\n    resources: {memory: 0}\n", "resources.memory must be at least 1"),
    ("  - name: svc\n    sandbox: {ro_paths: [1]}\n", "sandbox.ro_paths[0] must be a non-empty string"),
    ("  - name: svc\n    config: [1]\n", "config must be a mapping"),
    ("  - name: hello\n    version: 1.2\n", 'version must be a string; quote it: version: "1.2"'),
    ("  - name: iii-state\n    image: a/b\n", "'iii-state' is the name of a first-party worker"),
])
def test_entry_errors(body: str, fragment: str) -> None:
    msg = error("workers:\n" + body)
    assert fragment in msg and msg.startswith("config.yaml:")


def test_duplicate_names_and_aliases() -> None:
    assert error("workers:\n  - name: svc\n  - name: svc\n") == \
        "config.yaml:3:11: duplicate worker 'svc' (also declared on line 2)"
    assert error("workers:\n  - name: state\n  - name: iii-state\n") == \
        "config.yaml:3:11: duplicate worker 'iii-state' (also declared as 'state')"
    assert error("workers:\n  - name: iii-state\n  - name: state\n") == \
        "config.yaml:3:11: duplicate worker 'iii-state' (also declared as 'state')"


def test_yaml_syntax_errors_have_positions() -> None:
    assert error("workers:\n\t- name: x\n").startswith("config.yaml:2:1: invalid YAML: found character '\\t'")
    assert error("workers: [a\n").startswith("config.yaml:2:1: invalid YAML:")
    assert "duplicate key" in error("workers: []\nworkers: []\n")


def test_top_level_shapes() -> None:
    assert load("").workers == [] and load("workers:\n").workers == []
    assert error("- a\n") == "config.yaml:1:1: the top level must be a mapping (workers: ...)"
    assert error("workers: {name: x}\n").startswith("config.yaml:1:10: workers must be a list")


def test_load_config_reports_the_file_basename(tmp_path: Path) -> None:
    path = tmp_path / "other.yaml"
    path.write_text("workers:\n  - name: svc\n    bogus: 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert str(info.value) == "other.yaml:3:5: unknown key 'bogus'"
    assert (info.value.line, info.value.col, info.value.path) == (3, 5, path)


# --------------------------------------------------------------------------- normalisation

def test_aliases_resolve_to_canonical_names() -> None:
    assert ALIASES == {"state": "iii-state", "http": "iii-http", "queue": "iii-queue",
                       "cron": "iii-cron", "pubsub": "iii-pubsub", "stream": "iii-stream"}
    cfg = load("workers:\n" + "".join(f"  - name: {a}\n" for a in ALIASES))
    assert [w.name for w in cfg.workers] == [canonical_name(a) for a in ALIASES]
    assert [w.declared_name for w in cfg.workers] == list(ALIASES)
    assert all(w.kind == "builtin" for w in cfg.workers)


def test_kinds_defaults_and_fields() -> None:
    cfg = load("""\
        registries: [./REG, https://r.example/]
        workers:
          - name: hello
            version: ^1.2.0
          - name: echo
            image: 127.0.0.1:5000/demo/echo:1.0
          - name: svc
            worker_path: ./svc
            enabled: false
            namespace: orders
            restart: {backoff_initial_ms: 100, backoff_max_ms: 400, max_restarts: 3}
            resources: {memory: 256, cpus: 0.5}
            logs: {max_bytes: 2048, keep: 2}
            sandbox: {hide_home: false, rw_paths: [/tmp/x]}
            stop_timeout_ms: 500
          - name: ticker
            restart: never
        """)
    hello, echo, svc, ticker = cfg.workers
    assert cfg.registries == ["./REG", "https://r.example/"]
    assert (hello.kind, hello.version, hello.isolation) == ("registry", "^1.2.0", "auto")
    assert (echo.kind, echo.image) == ("oci", "127.0.0.1:5000/demo/echo:1.0")
    assert svc.kind == "local" and svc.enabled is False and svc.namespace == "orders"
    assert svc.restart == RestartPolicy("on-failure", 3, 60.0, 100, 400)
    assert (svc.resources.memory, svc.resources.cpus, svc.resources.pids) == (256, 0.5, None)
    assert (svc.logs.max_bytes, svc.logs.keep, svc.stop_timeout_ms) == (2048, 2, 500)
    assert svc.sandbox.hide_home is False and svc.sandbox.rw_paths == ("/tmp/x",)
    assert cfg.worker_dir(svc) == Path("/proj/svc")
    assert ticker.restart.policy == "never" and ticker.logs.max_bytes == 10 * 1024 * 1024
    assert hello.config == {} and hello.env == {} and hello.stop_timeout_ms == 10000


def test_entries_compare_by_content_not_position() -> None:
    a = load("workers:\n  - name: state\n  - name: svc\n    worker_path: ./s\n")
    b = load("# moved\nworkers:\n\n  - name: svc\n    worker_path: ./s\n  - name: iii-state\n")
    assert a.worker("svc") == b.worker("svc") and a.worker("iii-state") == b.worker("state")
    c = load("workers:\n  - name: svc\n    worker_path: ./s\n    config:\n      x: 1\n")
    assert c.worker("svc") != a.worker("svc")


def test_modules_is_read_after_workers_with_a_warning() -> None:
    cfg = load("modules:\n  - name: iii-cron\nworkers:\n  - name: iii-state\n")
    assert [w.name for w in cfg.workers] == ["iii-state", "iii-cron"]
    assert cfg.warnings and "modules" in cfg.warnings[0]


def test_positions_of_config_values() -> None:
    cfg = load("workers:\n  - name: iii-http\n    config:\n      port: 0\n      cors:\n        allowed_origins: [a]\n")
    entry = cfg.workers[0]
    assert entry.locate("config.port") == (4, 13)
    assert entry.locate("config.cors.allowed_origins[0]") == (6, 27)
    assert entry.locate("config.nope") == (4, 7)  # nearest recorded parent: the block
    assert (entry.line, entry.col) == (2, 5)


# --------------------------------------------------------------------------- listeners

def test_listeners_from_worker_manager_entries() -> None:
    cfg = load("""\
        workers:
          - name: iii-worker-manager
            config:
              port: ${ENGINE_PORT:0}
          - name: iii-state
          - name: iii-worker-manager
            config:
              port: 49135
              host: 127.0.0.1
              handshake_timeout_ms: 500
              middleware_function_id: gate::middleware
              rbac:
                auth_function_id: gate::auth
        """)
    main, public = cfg.listeners()
    assert main == Listener("0.0.0.0", 0, 10000, None, None, 0) and main.trusted
    assert (public.host, public.port, public.handshake_timeout_ms) == ("127.0.0.1", 49135, 500)
    assert public.rbac == {"auth_function_id": "gate::auth"} and not public.trusted
    assert public.middleware_function_id == "gate::middleware"


def test_listener_config_errors_have_positions() -> None:
    cfg = load("workers:\n  - name: iii-worker-manager\n    config:\n      prot: 1\n")
    with pytest.raises(ConfigError) as info:
        cfg.listeners()
    assert str(info.value).startswith("config.yaml:4:13: unknown key 'prot' in iii-worker-manager config (did you mean 'port'?)")
    cfg = load("workers:\n  - name: iii-worker-manager\n    config:\n      port: ${P:x}\n")
    with pytest.raises(ConfigError, match="config.yaml:4:13: config.port must be an integer"):
        cfg.listeners()
