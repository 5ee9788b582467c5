"""Global IDs: URIs, the locator registry, SQLAlchemy and Django records through every path a job takes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, process, wait_for
from globalid_models import Base, Membership, Post, Tag, User
from sqlalchemy import create_engine, event, inspect, select
from sqlalchemy.orm import Session, object_session, scoped_session, sessionmaker

import kiq
import kiq.testing
from kiq import adapters, globalid, processor
from kiq.callbacks import discard_on
from kiq.globalid import GlobalID
from kiq.retry import SUCCESS
from kiq.serialize import deserialize, serialize

APP = "testapp"

seen: list[dict[str, Any]] = []
scoped: list[scoped_session[Session]] = []  # the scoped session of the running test, for jobs


def record(model: Any, **extra: Any) -> None:
    seen.append({"model": model, "session": object_session(model), **extra})


class GidUserJob(kiq.Job):
    def perform(self, user: User, friend: User | None = None) -> None:
        record(user, name=user.name, titles=[post.title for post in user.posts],
               friend=friend.name if friend else None)


@discard_on(kiq.DeserializationError)
class GidDiscardJob(kiq.Job):
    def perform(self, user: User) -> None:
        record(user, name=user.name)


class GidRenameJob(kiq.Job):
    def perform(self, user: User, name: str) -> None:
        user.name = name
        session = scoped[0]()
        record(user, same_session=object_session(user) is session)
        session.commit()


class GidArticleJob(kiq.Job):
    def perform(self, article: Any) -> None:
        seen.append({"model": article, "title": article.title})


@discard_on(kiq.DeserializationError)
class GidDiscardArticleJob(kiq.Job):
    def perform(self, article: Any) -> None:
        seen.append({"model": article})


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test has its own locators, the app name "testapp", and gets the adapter back as it was."""
    monkeypatch.setattr(globalid, "_locators", [])
    monkeypatch.setattr(globalid, "app", APP)
    monkeypatch.setattr(adapters, "_current", adapters._current)
    seen.clear()
    yield
    globalid.release()


# URIs


@pytest.mark.parametrize(
    ("uri", "app", "model", "model_id", "params"),
    [
        ("gid://bcx/Person/42", "bcx", "Person", "42", ()),
        ("gid://bcx/Admin::User/42", "bcx", "Admin::User", "42", ()),
        ("gid://kiq/Tag/a+b%2Fc", "kiq", "Tag", "a b/c", ()),
        ("gid://my-app.example/djangoapp.Note/7?tenant=acme&x=", "my-app.example", "djangoapp.Note", "7",
         (("tenant", "acme"), ("x", ""))),
    ],
)
def test_parse_and_build_round_trip(uri: str, app: str, model: str, model_id: str, params: Any) -> None:
    gid = GlobalID.parse(uri)
    assert (gid.app, gid.model_name, gid.model_id, gid.params) == (app, model, model_id, params)
    assert str(gid) == uri
    assert GlobalID.build(model, model_id, app=app, params=params) == gid


def test_build_quotes_the_id_and_uses_the_configured_app() -> None:
    gid = GlobalID.build("Tag", "a b/c?d&é")
    assert gid.uri == "gid://testapp/Tag/a+b%2Fc%3Fd%26%C3%A9"
    assert GlobalID.parse(gid.uri).model_id == "a b/c?d&é"
    assert GlobalID.build("User", 5, params={"v": "2"}).uri == "gid://testapp/User/5?v=2"


@pytest.mark.parametrize(
    "uri",
    ["gid://kiq/User", "gid://kiq/User/", "http://kiq/User/1", "gid:///User/1", "gid://kiq//1",
     "gid://kiq/Us er/1", "gid://k_q/User/1", "gid://kiq/User/1/2", "gid://kiq/User/1#frag"],
)
def test_malformed_uris_are_refused(uri: str) -> None:
    with pytest.raises(ValueError):
        GlobalID.parse(uri)


def test_configure_sets_the_app_name() -> None:
    globalid.configure(app="billing")
    assert globalid.app == "billing"
    assert GlobalID.build("User", 1).uri == "gid://billing/User/1"
    with pytest.raises(ValueError, match="invalid global ID app name 'no spaces'"):
        globalid.configure(app="no spaces")
    assert globalid.app == "billing"


# The registry, with a locator of plain objects


class Thing:
    def __init__(self, key: str) -> None:
        self.key = key


class ThingLocator:
    def __init__(self, name: str = "Thing", *, broken: bool = False) -> None:
        self.name = name
        self.store: dict[str, Thing] = {}
        self.broken = broken

    def identify(self, obj: object) -> tuple[str, object] | None:
        return (self.name, obj.key) if isinstance(obj, Thing) else None

    def locate(self, model_name: str, model_id: str) -> object:
        if model_name != self.name:
            raise globalid.UnknownModelError(model_name)
        if self.broken:
            raise RuntimeError("the store is down")
        if model_id not in self.store:
            raise globalid.RecordNotFoundError(f"{model_name} {model_id!r} not found")
        return self.store[model_id]


def test_a_custom_locator_round_trips() -> None:
    locator = globalid.register(ThingLocator())
    thing = locator.store["x 1"] = Thing("x 1")
    assert serialize([thing]) == [{"_aj_globalid": "gid://testapp/Thing/x+1"}]
    assert deserialize({"_aj_globalid": "gid://testapp/Thing/x+1"}) is thing
    assert globalid.locate("GID://TESTAPP/Thing/x+1?ignored=1") is thing  # scheme and app ignore case


def test_locators_are_tried_in_order() -> None:
    later = globalid.register(ThingLocator("Later"))
    first = globalid.register(ThingLocator("First"), first=True)
    assert globalid.locators() == [first, later]
    assert globalid.to_global_id(Thing("1")) == "gid://testapp/First/1"
    later.store["1"] = thing = Thing("1")
    assert globalid.locate("gid://testapp/Later/1") is thing  # First does not know Later: next one
    globalid.unregister(first)
    assert globalid.to_global_id(Thing("1")) == "gid://testapp/Later/1"


def test_locate_says_why_nothing_was_found() -> None:
    with pytest.raises(globalid.UnknownModelError, match="no global ID locator is registered"):
        globalid.locate("gid://testapp/Thing/1")
    globalid.register(ThingLocator())
    with pytest.raises(globalid.AppMismatchError, match="belongs to app 'other', not to this app 'testapp'"):
        globalid.locate("gid://other/Thing/1")
    with pytest.raises(globalid.UnknownModelError, match="no registered locator knows model 'Ghost'"):
        globalid.locate("gid://testapp/Ghost/1")
    with pytest.raises(globalid.RecordNotFoundError, match="Thing '1' not found"):
        globalid.locate("gid://testapp/Thing/1")
    for uri in ("gid://other/Thing/1", "gid://testapp/Ghost/1", "gid://testapp/Thing/1", "gid://x"):
        with pytest.raises(kiq.DeserializationError, match=f"cannot locate {uri}: "):
            deserialize({"_aj_globalid": uri})


def test_store_failures_are_not_deserialization_errors() -> None:
    """A store that is down must reach the retry policy, not a discard_on(DeserializationError)."""
    globalid.register(ThingLocator(broken=True))
    with pytest.raises(RuntimeError, match="the store is down"):
        deserialize({"_aj_globalid": "gid://testapp/Thing/1"})


def test_objects_no_locator_knows_still_fail_at_enqueue() -> None:
    globalid.register(ThingLocator())
    with pytest.raises(kiq.SerializationError, match=r"args\[0\]: cannot serialize object of type object"):
        GidUserJob.perform_later(object())


def test_kiq_imports_without_sqlalchemy_or_django() -> None:
    code = (
        "import sys\n"
        "sys.modules['sqlalchemy'] = sys.modules['django'] = None\n"
        "import kiq, kiq.processor, kiq.worker\n"
        "from kiq.serialize import serialize\n"
        "kiq.globalid.SQLAlchemyLocator(lambda: None, models=[]); kiq.globalid.DjangoLocator(models=[])\n"
        "try:\n"
        "    serialize(object())\n"
        "except kiq.SerializationError as error:\n"
        "    print(kiq.globalid.app, error)\n"
    )
    env = {"PATH": "/usr/bin:/bin", "KIQ_GLOBALID_APP": "fromenv"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.strip() == "fromenv cannot serialize object of type object"


# SQLAlchemy


class Db:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.engine = create_engine(f"sqlite:///{path}")
        Base.metadata.create_all(self.engine)
        self.Session = scoped_session(sessionmaker(self.engine))
        with Session(self.engine) as session:
            session.add_all([User(id=1, name="Ada", posts=[Post(title="Notes")]), User(id=2, name="Brian")])
            session.commit()

    def user(self, user_id: int = 1) -> User:
        """A user loaded by a session of its own, now closed: as a web request would pass it."""
        with Session(self.engine) as session:
            user = session.get(User, user_id)
            assert user is not None
            return user

    def delete_user(self, user_id: int) -> None:
        with Session(self.engine) as session:
            session.delete(session.get(User, user_id))
            session.commit()


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Db]:
    database = Db(tmp_path / "app.db")
    scoped.append(database.Session)
    yield database
    scoped.clear()
    database.Session.remove()
    database.engine.dispose()


@pytest.fixture
def sqla(db: Db) -> globalid.SQLAlchemyLocator:
    return globalid.register(globalid.SQLAlchemyLocator(db.Session, models=[User, Post]))


def assert_closed_after_the_job(db: Db, model: Any) -> None:
    assert inspect(model).detached  # the job's session was closed when the job ended
    assert not db.Session.registry.has()
    assert db.engine.pool.checkedout() == 0  # type: ignore[attr-defined]


def test_inline_job_gets_a_live_record(db: Db, sqla: Any) -> None:
    adapters.use("inline")
    GidUserJob.perform_later(db.user(1), friend=db.user(2))
    [run] = seen
    assert isinstance(run["model"], User)
    assert (run["model"].id, run["name"], run["titles"], run["friend"]) == (1, "Ada", ["Notes"], "Brian")
    assert run["session"] is not None  # attached while the job ran: lazy loads worked
    assert_closed_after_the_job(db, run["model"])


def test_test_adapter_stores_the_global_id(db: Db, sqla: Any) -> None:
    adapter = adapters.use("test")
    assert isinstance(adapter, adapters.TestAdapter)
    GidUserJob.perform_later(db.user(1))
    [payload] = adapter.enqueued
    assert payload["args"] == [{"_aj_globalid": "gid://testapp/User/1"}]
    adapter.perform(payload)
    assert [run["name"] for run in seen] == ["Ada"]
    assert_closed_after_the_job(db, seen[0]["model"])


def test_redis_payload_runs_in_the_processor(db: Db, sqla: Any, client: Any, r: Any) -> None:
    adapters.use("redis")
    GidUserJob.perform_later(db.user(2), friend=db.user(1))
    raw = r.rpop("queue:default")
    payload = json.loads(raw)
    assert payload["args"] == [{"_aj_globalid": "gid://testapp/User/2"}]
    assert payload["kwargs"] == {"friend": {"_aj_globalid": "gid://testapp/User/1"}}
    assert process("default", raw) == SUCCESS
    [run] = seen
    assert (run["name"], run["titles"], run["friend"]) == ("Brian", [], "Ada")
    assert_closed_after_the_job(db, run["model"])


def test_a_deleted_record_is_a_deserialization_error_a_job_can_discard(
    db: Db, sqla: Any, client: Any, r: Any
) -> None:
    adapters.use("redis")
    GidDiscardJob.perform_later(db.user(1))
    GidUserJob.perform_later(db.user(1))
    db.delete_user(1)
    outcome = process("default", r.rpop("queue:default"))
    assert (outcome.failed, outcome.action) == (True, "")  # discarded, not retried
    outcome = process("default", r.rpop("queue:default"))
    assert outcome.action == "retry"
    failed = json.loads(outcome.payload)
    assert failed["error_class"] == "kiq.serialize.DeserializationError"
    assert failed["error_message"] == "cannot locate gid://testapp/User/1: User with id '1' not found"
    assert seen == []
    assert db.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    with pytest.raises(kiq.DeserializationError, match="User with id '9' not found"):
        deserialize({"_aj_globalid": "gid://testapp/User/9"})
    with pytest.raises(kiq.DeserializationError, match="'abc' is not a valid id for User"):
        deserialize({"_aj_globalid": "gid://testapp/User/abc"})


def test_a_database_that_is_down_is_retried_not_discarded(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'missing' / 'app.db'}")
    globalid.register(globalid.SQLAlchemyLocator(sessionmaker(engine), models=[User]))
    payload = {"class": "GidDiscardJob", "args": [{"_aj_globalid": "gid://testapp/User/1"}],
               "jid": "a" * 24, "queue": "default", "retry": True, "created_at": time.time()}
    outcome = processor.handle(GidDiscardJob, payload, "default")
    assert outcome.action == "retry"
    assert json.loads(outcome.payload)["error_class"] == "sqlalchemy.exc.OperationalError"
    engine.dispose()


def test_the_job_can_change_and_commit_its_record(db: Db, sqla: Any) -> None:
    adapters.use("inline")
    GidRenameJob.perform_later(db.user(1), "Grace")
    assert seen[0]["same_session"]  # the job's own Session() holds the record
    assert db.user(1).name == "Grace"
    assert_closed_after_the_job(db, seen[0]["model"])


def test_inline_job_borrows_the_callers_scoped_session(db: Db, sqla: Any) -> None:
    adapters.use("inline")
    session = db.Session()
    user = session.get(User, 1)
    GidUserJob.perform_later(user)
    assert seen[0]["model"] is user
    assert inspect(user).session is session  # the caller's session is still open
    assert db.Session.registry.has()


def test_a_sessionmaker_gives_each_job_a_session_of_its_own(db: Db) -> None:
    globalid.register(globalid.SQLAlchemyLocator(sessionmaker(db.engine), models=[User]))
    adapters.use("inline")
    GidUserJob.perform_later(db.user(1), friend=db.user(2))
    [run] = seen
    assert run["titles"] == ["Notes"]
    assert run["session"] is not None
    assert inspect(run["model"]).detached
    assert db.engine.pool.checkedout() == 0  # type: ignore[attr-defined]


def test_assert_enqueued_with_matches_a_record_by_its_global_id(db: Db) -> None:
    """With a plain sessionmaker each lookup is another object of the same row; the assertion
    compares them as Active Job does, serialized."""
    globalid.register(globalid.SQLAlchemyLocator(sessionmaker(db.engine), models=[User]))
    with kiq.testing.test_adapter() as jobs:
        GidUserJob.perform_later(db.user(1), friend=db.user(2))
        jobs.assert_enqueued_with(job=GidUserJob, args=[db.user(1)], kwargs={"friend": db.user(2)})
        with pytest.raises(AssertionError, match="no enqueued job matches"):
            jobs.assert_enqueued_with(job=GidUserJob, args=[db.user(2)])


def test_locate_outside_a_job_keeps_the_session_until_release(db: Db, sqla: Any) -> None:
    user = globalid.locate("gid://testapp/User/1")
    assert isinstance(user, User) and [post.title for post in user.posts] == ["Notes"]
    assert db.Session.registry.has()
    globalid.release()
    assert not db.Session.registry.has() and inspect(user).detached


def test_unsaved_and_composite_records_fail_at_enqueue(db: Db) -> None:
    globalid.register(globalid.SQLAlchemyLocator(db.Session, models=[User, Membership]))
    adapters.use("test")
    with pytest.raises(kiq.SerializationError, match=r"^args\[0\]: User is not saved yet"):
        GidUserJob.perform_later(User(name="new"))
    session = db.Session()
    pending = User(name="pending")
    session.add(pending)
    with pytest.raises(kiq.SerializationError, match="User is not saved yet"):
        GidUserJob.perform_later(pending)
    session.flush()
    GidUserJob.perform_later(pending)  # flushed: it has its id
    membership = Membership(user_id=1, group="admins")
    session.add(membership)
    session.flush()
    with pytest.raises(kiq.SerializationError, match=r"composite primary key \(user_id, group\)"):
        GidUserJob.perform_later(membership)
    session.rollback()


def test_string_keys_and_ruby_names(db: Db) -> None:
    locator = globalid.SQLAlchemyLocator(db.Session, models={"Admin::User": User, "Tag": Tag})
    globalid.register(locator)
    with Session(db.engine) as session:
        session.add(Tag(slug="a b/c"))
        session.commit()
        tag = session.scalars(select(Tag)).one()
    gids = serialize([tag, db.user(1)])
    assert gids == [{"_aj_globalid": "gid://testapp/Tag/a+b%2Fc"}, {"_aj_globalid": "gid://testapp/Admin::User/1"}]
    found = deserialize(gids)
    assert [type(item) for item in found] == [Tag, User]  # type: ignore[attr-defined]
    assert found[0].slug == "a b/c"  # type: ignore[index]
    with pytest.raises(globalid.UnknownModelError):
        globalid.locate("gid://testapp/User/1")  # only the names given


def test_a_locator_without_an_allow_list_is_refused(db: Db) -> None:
    needs = r"^SQLAlchemyLocator needs models=\[\.\.\.\], the models jobs may receive: a global ID naming"
    with pytest.raises(TypeError, match=needs):
        globalid.SQLAlchemyLocator(db.Session)
    with pytest.raises(TypeError, match=needs):
        globalid.SQLAlchemyLocator(db.Session, Base)  # a base, where the models go
    with pytest.raises(TypeError, match=needs):
        globalid.SQLAlchemyLocator(db.Session, base=Base)  # which once allowed every mapped class
    with pytest.raises(TypeError, match=r"^DjangoLocator needs models=\[\.\.\.\]"):
        globalid.DjangoLocator()


class SqlLog:
    """The SQL an engine runs, to see which tables a lookup read."""

    def __init__(self, engine: Any) -> None:
        self.statements: list[str] = []
        event.listen(engine, "before_cursor_execute", self.record)

    def record(self, conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
        self.statements.append(statement)


def test_a_model_outside_the_allow_list_fails_the_job_without_loading_the_row(
    db: Db, client: Any, r: Any
) -> None:
    """A payload pushed by whoever can write to Redis names a Post for a job given Users only."""
    globalid.register(globalid.SQLAlchemyLocator(db.Session, models=[User]))
    sql = SqlLog(db.engine)
    for model, key in (("Post", 1), ("Membership", "1"), ("User", 1)):
        r.lpush("queue:default", json.dumps({
            "class": "GidDiscardJob", "args": [{"_aj_globalid": f"gid://testapp/{model}/{key}"}],
            "jid": f"{model[0]}" * 24, "queue": "default", "retry": 3, "created_at": time.time()}))
    for _ in ("Post", "Membership"):
        outcome = process("default", r.rpop("queue:default"))
        assert (outcome.failed, outcome.action) == (True, "")  # failed (and discarded), never run
        assert sql.statements == []
    assert seen == []
    assert process("default", r.rpop("queue:default")) == SUCCESS
    assert [run["name"] for run in seen] == ["Ada"] and len(sql.statements) == 1
    with pytest.raises(kiq.DeserializationError) as raised:
        deserialize({"_aj_globalid": "gid://testapp/Post/1"})
    assert str(raised.value) == ("cannot locate gid://testapp/Post/1: no registered locator knows model "
                                 "'Post': 'Post' is not one of the models this SQLAlchemyLocator may load "
                                 "(its models=)")
    assert len(sql.statements) == 1
    with Session(db.engine) as session:
        post = session.get(Post, 1)
    with pytest.raises(kiq.SerializationError, match="cannot serialize object of type Post"):
        GidArticleJob.perform_later(post)  # nor can one be enqueued


@pytest.mark.slow
def test_a_worker_refuses_a_model_outside_the_allow_list(
    db: Db, start_kiq: Any, r: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """globalid_jobs lets a job receive Users only: a real worker fails a payload naming a Post."""
    monkeypatch.setenv("KIQ_TEST_GLOBALID_DB", str(db.path))
    monkeypatch.setenv("KIQ_GLOBALID_APP", APP)
    start_kiq(require=["sample_jobs", "globalid_jobs"], concurrency=2)
    r.sadd("queues", "default")
    r.lpush("queue:default", json.dumps({
        "class": "LocatedUserJob", "args": [{"_aj_globalid": "gid://testapp/Post/1"}], "jid": "p" * 24,
        "queue": "default", "retry": 3, "created_at": time.time()}))
    [failed] = wait_for(lambda: r.zrange("retry", 0, -1), timeout=20)
    entry = json.loads(failed)
    assert entry["error_class"] == "kiq.serialize.DeserializationError"
    assert "'Post' is not one of the models this SQLAlchemyLocator may load" in entry["error_message"]
    assert r.lrange("located", 0, -1) == []


@pytest.mark.slow
def test_worker_locates_the_record(
    db: Db, sqla: Any, start_kiq: Any, client: Any, r: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real ``kiq start`` worker, its locator set up by a required module, finds the user."""
    monkeypatch.setenv("KIQ_TEST_GLOBALID_DB", str(db.path))
    monkeypatch.setenv("KIQ_GLOBALID_APP", APP)
    start_kiq(require=["sample_jobs", "globalid_jobs"], concurrency=2)
    client.enqueue("LocatedUserJob", [db.user(1)])
    assert wait_for(lambda: r.lrange("located", 0, -1), timeout=20) == ["Ada:Notes"]


# Django


@pytest.fixture(scope="module")
def django_models(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Django set up once per test process: SQLite in a temporary directory, two small apps."""
    django = pytest.importorskip("django")
    from django.conf import settings

    if not settings.configured:
        database = tmp_path_factory.mktemp("django") / "db.sqlite3"
        settings.configure(
            DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(database)}},
            INSTALLED_APPS=["djangoapp", "djangoother"],
            USE_TZ=True,
        )
        django.setup()
    from django.db import connection
    from djangoapp.models import Article, Note
    from djangoother.models import Note as OtherNote

    with connection.schema_editor() as editor:
        for model in (Article, Note, OtherNote):
            if model._meta.db_table not in connection.introspection.table_names():
                editor.create_model(model)
    return Article, Note, OtherNote


@pytest.fixture
def django(django_models: Any) -> Iterator[Any]:
    globalid.register(globalid.DjangoLocator(models=django_models))
    yield django_models
    for model in django_models:
        model.objects.all().delete()


def test_django_round_trip(django: Any, client: Any, r: Any) -> None:
    article_model, _, _ = django
    article = article_model.objects.create(title="Hello")
    adapters.use("inline")
    GidArticleJob.perform_later(article)
    [run] = seen
    assert (type(run["model"]), run["title"], run["model"].pk) == (article_model, "Hello", article.pk)
    adapters.use("redis")
    GidArticleJob.perform_later(article)
    raw = r.rpop("queue:default")
    assert json.loads(raw)["args"] == [{"_aj_globalid": f"gid://testapp/Article/{article.pk}"}]
    assert process("default", raw) == SUCCESS
    assert seen[1]["title"] == "Hello"


def test_django_missing_record_is_discarded(django: Any, client: Any, r: Any) -> None:
    article_model, _, _ = django
    article = article_model.objects.create(title="Gone soon")
    adapters.use("redis")
    GidDiscardArticleJob.perform_later(article)
    GidArticleJob.perform_later(article)
    article.delete()
    outcome = process("default", r.rpop("queue:default"))
    assert (outcome.failed, outcome.action) == (True, "")
    outcome = process("default", r.rpop("queue:default"))
    assert outcome.action == "retry"
    assert json.loads(outcome.payload)["error_class"] == "kiq.serialize.DeserializationError"
    assert seen == []
    with pytest.raises(kiq.DeserializationError, match="'abc' is not a valid id for Article"):
        deserialize({"_aj_globalid": "gid://testapp/Article/abc"})


def test_django_unsaved_records_fail_at_enqueue(django: Any) -> None:
    article_model, _, _ = django
    adapters.use("test")
    with pytest.raises(kiq.SerializationError, match="Article is not saved yet"):
        GidArticleJob.perform_later(article_model(title="draft"))
    with pytest.raises(kiq.SerializationError, match="Article is not saved yet"):
        GidArticleJob.perform_later(article_model(id=99, title="draft with an id"))


def test_django_loads_only_the_models_it_was_given(django: Any) -> None:
    article_model, note_model, _ = django
    article = article_model.objects.create(title="allowed")
    note = note_model.objects.create(text="not for jobs")
    globalid.unregister(globalid.locators()[0])
    only_articles = globalid.register(globalid.DjangoLocator(models=[article_model]))
    assert globalid.locate(f"gid://testapp/Article/{article.pk}") == article
    for name in ("Note", "djangoapp.Note", "djangoother.Note", "auth.User"):
        refused = f"'{name}' is not one of the models this DjangoLocator may load"
        with pytest.raises(kiq.DeserializationError, match=refused):
            deserialize({"_aj_globalid": f"gid://testapp/{name}/{note.pk}"})
    adapters.use("test")
    with pytest.raises(kiq.SerializationError, match="cannot serialize object of type Note"):
        GidArticleJob.perform_later(note)
    globalid.unregister(only_articles)
    globalid.register(globalid.DjangoLocator(models={"Blog::Post": article_model}))
    assert serialize([article]) == [{"_aj_globalid": f"gid://testapp/Blog::Post/{article.pk}"}]
    with pytest.raises(kiq.DeserializationError, match="'Article' is not one of the models"):
        deserialize({"_aj_globalid": f"gid://testapp/Article/{article.pk}"})


def test_django_shared_class_names_take_the_app_label(django: Any) -> None:
    _, note_model, other_note_model = django
    note = note_model.objects.create(text="mine")
    other = other_note_model.objects.create(body="theirs")
    gids = serialize([note, other])
    assert gids == [{"_aj_globalid": f"gid://testapp/djangoapp.Note/{note.pk}"},
                    {"_aj_globalid": f"gid://testapp/djangoother.Note/{other.pk}"}]
    assert deserialize(gids) == [note, other]  # Django models compare by class and pk
    article = django[0].objects.create(title="unique name")
    assert globalid.locate(f"gid://testapp/djangoapp.Article/{article.pk}") == article  # always accepted
    with pytest.raises(globalid.LocateError, match="two apps have a model named Note"):
        globalid.locate(f"gid://testapp/Note/{note.pk}")
