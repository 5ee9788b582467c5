"""Every Redis key name is built in kiq.keys, and every Lua script gets its keys in ``KEYS[]``.

Both are read from the source: the scripts are the module-level strings of kiq's modules that
call Redis, and each key a script hands to ``redis.call`` or ``redis.pcall`` must come from
``KEYS[]``, directly or through locals and function parameters that do; never from ARGV, a
``prefix``, or a name built with ``..``. A key the reading cannot trace back (a loop over a
table, a function's result) fails too: such a script is rewritten, or this reading taught more.
"""

from __future__ import annotations

import ast
import calendar
import importlib
import inspect
import re
import time

from conftest import ROOT

from kiq.keys import Keys, member, minute_names, owner

PACKAGE = ROOT / "kiq"

KEYLESS = {"TIME", "PUBLISH", "PING", "ECHO"}
ALL_KEYS = {"DEL", "UNLINK", "EXISTS", "TOUCH", "MGET"}
TWO_KEYS = {"RPOPLPUSH", "LMOVE", "SMOVE", "RENAME"}
CALL = re.compile(r"\bredis\.p?call\s*\(")
STRING = re.compile(r"'((?:[^'\\]|\\.)*)'|\"((?:[^\"\\]|\\.)*)\"")
ASSIGNMENT = re.compile(r"^\s*(?:local\s+)?([A-Za-z_]\w*(?:\s*,\s*[A-Za-z_]\w*)*)\s*=(?!=)(.*)$", re.M)
DECLARED = re.compile(r"KEYS\[([^\[\]]|\[[^\[\]]*\])*\]")


# -- reading Lua ----------------------------------------------------------------


def strip_comments(lua: str) -> str:
    """The script without its ``--`` comments (which may hold quotes of their own)."""
    out, quote, i = [], "", 0
    while i < len(lua):
        char = lua[i]
        if quote:
            out.append(char)
            if char == "\\":
                out.append(lua[i + 1])
                i += 1
            elif char == quote:
                quote = ""
        elif lua.startswith("--", i):
            i = lua.find("\n", i)
            if i < 0:
                break
            continue
        else:
            out.append(char)
            quote = char if char in "'\"" else ""
        i += 1
    return "".join(out)


def arguments(lua: str, start: int) -> list[str]:
    """The comma-separated arguments of the call whose ``(`` is just before ``start``."""
    args, depth, quote, begin = [], 0, "", start
    for i in range(start, len(lua)):
        char = lua[i]
        if quote:
            quote = "" if char == quote and lua[i - 1] != "\\" else quote
        elif char in "'\"":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}" and depth:
            depth -= 1
        elif char == ")" or (char == "," and not depth):
            args.append(lua[begin:i].strip())
            begin = i + 1
            if char == ")":
                return args
    raise AssertionError(f"unclosed call at {lua[start - 20:start + 20]!r}")


def key_arguments(lua: str) -> list[tuple[str, str]]:
    """(command, key expression) for every key of every ``redis.call`` and ``redis.pcall``."""
    found = []
    for call in CALL.finditer(lua):
        command, *args = arguments(lua, call.end())
        name = command.strip("'\"").upper()
        if not STRING.fullmatch(command):
            found.append((command, "?"))  # a command chosen at run time: which keys it takes is unknown
        elif name not in KEYLESS and args:
            keys = args if name in ALL_KEYS else args[:2] if name in TWO_KEYS else args[:1]
            found += [(name, key) for key in keys]
    return found


def sources(lua: str, name: str) -> list[str] | None:
    """Every expression the local ``name`` takes its value from: its assignments, and the
    arguments given for it where it is a function's parameter; None if it is bound another way
    (a loop over a table, one of several values of one call)."""
    if re.search(rf"\bfor\s+[\w\s,]*\b{name}\b[\w\s,]*\bin\b", lua):
        return None
    found: list[str] = []
    for assignment in ASSIGNMENT.finditer(lua):
        names = [n.strip() for n in assignment.group(1).split(",")]
        if name in names:
            values = arguments(assignment.group(2) + ")", 0)
            if len(values) < len(names):
                return None
            found.append(values[names.index(name)])
    for function in re.finditer(r"\bfunction\s+(\w+)\s*\(([^)]*)\)", lua):
        parameters = [p.strip() for p in function.group(2).split(",")]
        if name in parameters:
            calls = re.finditer(rf"(?<!function )\b{function.group(1)}\s*\(", lua)
            found += [arguments(lua, call.end())[parameters.index(name)] for call in calls]
    return found


def key_function(lua: str, name: str) -> bool:
    """Whether ``name`` is a local function that only returns one of ``KEYS[]``."""
    found = re.search(rf"\blocal\s+function\s+{name}\s*\([^)]*\)\s*return\s+(.*?)\s+end\b", lua)
    return bool(found and DECLARED.fullmatch(found.group(1)))


def parameter(lua: str, name: str) -> bool:
    return bool(re.search(rf"\bfunction\s+\w+\s*\([^)]*\b{name}\b", lua))


def undeclared(lua: str, expression: str, seen: frozenset[str] = frozenset()) -> str | None:
    """Why ``expression``, used as a key, is not a key from ``KEYS[]``; None if it is one.

    A parameter of a function that the script never calls (a part such as TRIM_DEAD, read
    alone) passes: its calls are read in the scripts that include it."""
    if expression == "?":
        return "runs a command named at run time"
    if DECLARED.fullmatch(expression) or expression in seen:
        return None
    if ".." in expression:
        return f"builds the key {expression!r} with '..'"
    if "ARGV" in expression:
        return f"takes the key {expression!r} from ARGV"
    if (call := re.fullmatch(r"([A-Za-z_]\w*)\(.*\)", expression)) and key_function(lua, call.group(1)):
        return None
    if not re.fullmatch(r"[A-Za-z_]\w*", expression):
        return f"uses {expression!r} as a key"
    values = sources(lua, expression)
    if values is None:
        return f"takes the key {expression!r} from something other than KEYS[]"
    if not values and not parameter(lua, expression):
        return f"uses {expression!r} as a key without saying where it comes from"
    for value in values:
        reason = undeclared(lua, value, seen | {expression})
        if reason:
            return f"{reason} (as {expression!r})"
    return None


def script_problems(lua: str) -> list[str]:
    lua = strip_comments(lua)
    problems = ["names a prefix"] if re.search(r"\bprefix\b", lua) else []
    for command, key in key_arguments(lua):
        reason = undeclared(lua, key)
        if reason:
            problems.append(f"{command}: {reason}")
    return problems


# -- what kiq holds ----------------------------------------------------------------


def modules() -> list[str]:
    """kiq's modules as paths below the package, without ``.py`` (``web/app`` for kiq.web.app)."""
    return sorted(str(path.relative_to(PACKAGE).with_suffix("")) for path in PACKAGE.rglob("*.py")
                  if path.stem not in ("__init__", "__main__"))


BOOT_MODULES = {"contrib/django/setup"}  # imported only to boot a framework in a worker (no scripts)


def scripts() -> dict[str, str]:
    """Every Lua script (and script part) kiq defines, by ``module.NAME``."""
    found = {}
    for module in modules():
        if module in BOOT_MODULES:
            continue
        tree = ast.parse((PACKAGE / f"{module}.py").read_text())
        assigned = {target.id for node in tree.body if isinstance(node, ast.Assign)
                    for target in node.targets if isinstance(target, ast.Name)}
        values = vars(importlib.import_module("kiq." + module.replace("/", ".")))
        for name in sorted(assigned):
            if isinstance(values.get(name), str) and CALL.search(values[name]):
                found[f"{module}.{name}"] = values[name]
    return found


def layout_fragments() -> set[str]:
    """The literal parts of kiq's key names, as Keys builds them, that no other text holds by
    chance: the names of kiq's own keys and the pieces around an identity or a queue."""
    keys = Keys()
    parts = {value for value in vars(keys).values() if isinstance(value, str)}
    for name, method in inspect.getmembers(Keys, inspect.isfunction):
        if not name.startswith("_"):
            count = len(inspect.signature(method).parameters) - 1
            parts.update(str(method(keys, *["\0"] * count)).split("\0"))
    return {part for part in parts if len(part) >= 4 and (":" in part or "-" in part)}


def extended(node: ast.JoinedStr | ast.BinOp, names: set[str]) -> str | None:
    """The Keys attribute (one of ``names``) that an f-string or a ``+`` makes a longer name of,
    such as ``f"{keys.processed}:{day}"``; None if it makes none."""
    parts = node.values if isinstance(node, ast.JoinedStr) else [node.left, node.right]
    parts = [part.value if isinstance(part, ast.FormattedValue) else part for part in parts]
    named = [part.attr for part in parts if isinstance(part, ast.Attribute) and part.attr in names]
    texts = [part.value for part in parts if isinstance(part, ast.Constant) and isinstance(part.value, str)]
    return named[0] if named and any(re.search(r"[:\-|]", text) for text in texts) else None


def lua_strings(lua: str) -> list[str]:
    return [a or b for a, b in STRING.findall(strip_comments(lua))]


# -- the tests ----------------------------------------------------------------


def test_every_script_is_found():
    assert {"heartbeat.BEAT", "lease.RECLAIM", "recovery.REQUEUE_ALL", "recovery.SWEEP", "recovery.GIVE_BACK",
            "recovery.REQUEUE_STRAYS", "recovery.BURY", "scheduler.MOVE", "api.KILL", "periodic.FIRE",
            "retry.TRIM_DEAD", "connection.ACCESS_CHECK", "roundtrip.ACK_AND_FETCH",
            "contrib/django/results.START", "contrib/django/results.FINISH"} <= set(scripts())


def test_every_script_receives_every_key_it_touches_in_KEYS():
    problems = {name: found for name, lua in scripts().items() if (found := script_problems(lua))}
    assert not problems, problems


def test_no_module_but_keys_builds_a_key_name():
    """No other module holds a literal part of a key name (its docstrings aside), makes a longer
    name of one of Keys' names, or reads the prefix that Keys puts in front of every name."""
    fragments = layout_fragments()
    assert {"queue:", "stat:processed", ":work", "-signals", "kiq:wip:", "kiq:swept:"} <= fragments
    problems = [problem for module in modules() if module != "keys"
                for problem in module_problems(module, fragments)]
    assert not problems, problems


def module_problems(module: str, fragments: set[str]) -> list[str]:
    names = {name for name, value in vars(Keys()).items() if isinstance(value, str)} - {"namespace", "prefix"}
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    skip = {id(body[0].value) for node in ast.walk(tree)  # docstrings
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and (body := node.body) and isinstance(body[0], ast.Expr)}
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and re.fullmatch(r"(\w+_)?prefix", node.attr):
            problems.append(f"{module}:{node.lineno} reads .{node.attr}")
        elif isinstance(node, (ast.JoinedStr, ast.BinOp)) and (named := extended(node, names)):
            problems.append(f"{module}:{node.lineno} builds a name from Keys' {named}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            texts = lua_strings(node.value) if CALL.search(node.value) else [node.value]
            problems += [f"{module}:{node.lineno} holds {fragment!r}" for text in texts
                         for fragment in sorted(fragments) if fragment in text]
    return problems


def test_the_reading_finds_keys_built_in_a_script():
    bad = {
        "redis.call('SADD', prefix .. 'queues', ARGV[1])": "prefix",
        "redis.call('LPUSH', 'queue:' .. ARGV[1], ARGV[2])": "'..'",
        "redis.call('GET', ARGV[1])": "from ARGV",
        "local key = ARGV[1]\nredis.call('GET', key)": "from ARGV",
        "local a, b = KEYS[1], KEYS[2] .. ':work'\nredis.call('DEL', a, b)": "'..'",
        "redis.call('RPOPLPUSH', KEYS[1], ARGV[2])": "from ARGV",
        "local function f(key)\n  redis.call('GET', key)\nend\nf(ARGV[1])": "from ARGV",
        "for _, key in ipairs(KEYS) do redis.call('GET', key) end": "other than KEYS",
        "redis.call('GET', other)": "without saying",
        "redis.call(ARGV[1], KEYS[1])": "named at run time",
        "local function wip(q) return 'kiq:wip:' .. q end\nredis.call('LLEN', wip(1))": "uses 'wip(1)'",
    }
    for lua, reason in bad.items():
        problems = script_problems(lua)
        assert any(reason in problem for problem in problems), (lua, problems)


def test_the_reading_accepts_keys_from_KEYS():
    good = [
        "local a, b = KEYS[1], KEYS[2]\nredis.call('RPOPLPUSH', a, b)",
        "redis.call('INCR', KEYS[tonumber(ARGV[1])])  -- a key chosen by ARGV among KEYS[]: 'queue:'",
        "local function trim(dead, now)\n  redis.call('ZREMRANGEBYSCORE', dead, '-inf', now)\nend\n"
        "trim(KEYS[2], ARGV[1])",
        "redis.call('SREM', KEYS[1], ARGV[1] .. '|' .. ARGV[2])",  # a member, not a key
        "local t = redis.call('TIME')",
        "local function wip(q) return KEYS[8 + 2 * q] end\nredis.call('LLEN', wip(1))",
    ]
    for lua in good:
        assert script_problems(lua) == [], lua


def test_members_of_the_registry_split_back():
    assert owner(member("host:1:abc", "default")) == ("host:1:abc", "default")
    assert owner(member("host:1:abc", "a|b")) == ("host:1:abc", "a|b")
    assert owner("not-a-member-of-kiq") is None
    keys = Keys("a*b")
    assert keys.member_of_wip(keys.wip("host:1:abc", "default")) == "host:1:abc|default"
    assert keys.wip_pattern() == r"a\*b:kiq:wip:*"


def test_metrics_keys_name_each_minute_as_sidekiq_7_does():
    """Sidekiq 7 names them with Ruby's strftime ``%Y%m%d|%-H:%-M`` (the hash) and ``%d-%H:%-M``
    (a class's histogram), both in UTC; glibc's strftime takes the same formats."""
    keys = Keys()
    start = calendar.timegm((2031, 12, 31, 0, 0, 0)) // 60
    for minute in range(start, start + 24 * 60 + 2):
        moment = time.gmtime(minute * 60)
        hash_name, window = minute_names(minute)
        assert keys.job_metrics(hash_name) == "j|" + time.strftime("%Y%m%d|%-H:%-M", moment)
        assert keys.job_histogram("Shop::Job", window) == "Shop::Job-" + time.strftime("%d-%H:%-M", moment)
    assert Keys("app").job_metrics(minute_names(start + 67)[0]) == "app:j|20311231|1:7"
