//! Real drivers in transaction mode, each with its defaults (named prepared statements among
//! them), 20 clients over a pool of 4 servers on 2 shards, so servers are shared and switched
//! under every client: psycopg 3 and asyncpg (PyPI), node-postgres and postgres.js (npm), pgJDBC
//! (Debian's `libpostgresql-jdbc-java`, which `scripts/test` installs when missing). Each script
//! also checks what its users rely on: a transaction stays on one server, an error in a prepared
//! statement leaves the connection (and the statement) usable, batches, pipelines and COPY
//! arrive.
//!
//! A driver that cannot be installed fails its test with the command that failed, never a skip.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::common::{config_for, pg, Pgring};

/// Where the drivers' packages go: once per target dir, reused by later runs.
fn scratch(name: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(name)
}

/// Runs `cmd`; panics with its output if it fails. `needs` says what it needs from the host.
fn must(cmd: &mut Command, what: &str, needs: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e} ({needs})"));
    assert!(
        out.status.success(),
        "{what} failed ({needs}):\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn succeeds(cmd: &mut Command) -> bool {
    cmd.output().is_ok_and(|o| o.status.success())
}

/// The venv with psycopg 3 and asyncpg.
fn python() -> &'static Path {
    static PY: OnceLock<PathBuf> = OnceLock::new();
    PY.get_or_init(|| {
        let venv = scratch("pyenv");
        let py = venv.join("bin/python");
        let ready = || succeeds(Command::new(&py).args(["-c", "import psycopg, asyncpg"]));
        if !ready() {
            let needs = "PyPI access to install psycopg[binary] and asyncpg";
            must(
                Command::new("python3").arg("-m").arg("venv").arg(&venv),
                "python3 -m venv",
                needs,
            );
            must(
                Command::new(venv.join("bin/pip")).args([
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    "psycopg[binary]",
                    "asyncpg",
                ]),
                "pip install psycopg[binary] asyncpg",
                needs,
            );
            assert!(ready(), "psycopg and asyncpg still do not import");
        }
        py
    })
}

/// A directory with node-postgres and postgres.js installed (scripts run there, so `require`
/// finds them).
fn node_modules() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = scratch("nodeenv");
        let ready = || {
            succeeds(Command::new("node").current_dir(&dir).args([
                "-e",
                "require('pg'); require('pg-cursor'); require('postgres')",
            ]))
        };
        if !ready() {
            std::fs::create_dir_all(&dir).expect("creating the node scratch dir");
            must(
                Command::new("npm").current_dir(&dir).args([
                    "install",
                    "--silent",
                    "--no-audit",
                    "--no-fund",
                    "--no-save",
                    "pg@8",
                    "pg-cursor@2",
                    "postgres@3",
                ]),
                "npm install pg@8 pg-cursor@2 postgres@3",
                "Node.js, npm and npm registry access",
            );
            assert!(ready(), "pg, pg-cursor and postgres still do not load");
        }
        dir
    })
}

/// Debian's pgJDBC jar.
const JDBC_JAR: &str = "/usr/share/java/postgresql.jar";

/// `program` under `timeout`: a driver that hangs fails its test in two minutes.
fn timed(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new("timeout");
    cmd.args(["--kill-after=5", "120"]).arg(program);
    cmd
}

/// Runs a driver script (`cmd`, from [`timed`]) with the pgring URL in `PGRING_DSN`; panics with
/// its output unless it succeeds and prints `ALL OK`.
async fn run_script(mut cmd: Command, pgring: &Pgring, user: &str, what: &'static str) {
    let dsn = format!("postgresql://{user}@127.0.0.1:{}/app", pgring.port);
    cmd.env("PGRING_DSN", dsn);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("driver task")
        .unwrap_or_else(|e| panic!("running the {what} script: {e}"));
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(out.status.success(), "{what} driver test failed:\n{text}");
    assert!(text.contains("ALL OK"), "{text}");
}

async fn run_python(pgring: &Pgring, user: &str, script: &'static str, what: &'static str) {
    let py = tokio::task::spawn_blocking(python).await.expect("venv");
    let mut cmd = timed(py);
    cmd.args(["-c", script]);
    run_script(cmd, pgring, user, what).await;
}

async fn run_node(pgring: &Pgring, user: &str, script: &'static str, what: &'static str) {
    let dir = tokio::task::spawn_blocking(node_modules)
        .await
        .expect("node modules");
    let mut cmd = timed("node");
    cmd.current_dir(dir).args(["-e", script]);
    run_script(cmd, pgring, user, what).await;
}

/// The pgring every driver test runs against: transaction mode, 4 servers, 2 shards.
fn pooler() -> Pgring {
    pooler_with("")
}

fn pooler_with(extra_general: &str) -> Pgring {
    Pgring::start(&config_for("transaction", 4, 2, extra_general))
}

const PSYCOPG: &str = r#"
import os, threading, psycopg
dsn = os.environ["PGRING_DSN"]
errors = []
def client(cid):
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:   # prepare_threshold: default (5)
            for i in range(40):
                got = conn.execute("SELECT %s::int8 * 2, %s::text", (cid * 1000 + i, f"c{cid}")).fetchone()
                assert got == (2 * (cid * 1000 + i), f"c{cid}"), got
                if i % 8 == 0:
                    with conn.transaction():
                        a = conn.execute("SELECT pg_backend_pid(), %s::int8", (i,)).fetchone()
                        b = conn.execute("SELECT pg_backend_pid(), %s::int8", (i,)).fetchone()
                        assert a[0] == b[0] and a[1] == i
            with conn.transaction():   # COPY into a table that lives as long as the transaction
                conn.execute("CREATE TEMP TABLE c (id int, t text) ON COMMIT DROP")
                with conn.cursor().copy("COPY c FROM STDIN") as copy:
                    for i in range(500):
                        copy.write_row((i, f"c{cid}"))
                assert conn.execute("SELECT count(*), sum(id) FROM c").fetchone() == (500, 124750)
            with conn.transaction():   # one server: the statement psycopg prepared is there
                conn.execute("SELECT %s::int8 * 2, %s::text", (1, "x"))
                n = conn.execute("SELECT count(*) FROM pg_prepared_statements WHERE name LIKE 'PGRING%%'").fetchone()[0]
                assert n >= 1, n
    except Exception as e:
        errors.append(f"client {cid}: {e!r}")
ts = [threading.Thread(target=client, args=(c,)) for c in range(20)]
[t.start() for t in ts]; [t.join() for t in ts]
print("\n".join(errors[:10]))
assert not errors, f"{len(errors)} psycopg clients failed"
print("ALL OK")
"#;

/// psycopg's pipeline mode: a batch of statements with one Sync, written in several pieces,
/// so the server's error for an early statement can reach pgring before the rest of the batch.
/// Everything prepared (`prepare_threshold=0`). Then a server-side cursor in a transaction.
const PSYCOPG_PIPELINE: &str = r#"
import os, threading, psycopg
dsn = os.environ["PGRING_DSN"]
errors = []
def client(cid):
    try:
        with psycopg.connect(dsn, autocommit=True, prepare_threshold=0) as conn:
            for r in range(10):
                with conn.pipeline() as p:
                    curs = [conn.execute("SELECT %s::int8 * 2", (cid * 100 + i,)) for i in range(20)]
                    p.sync()
                    got = [c.fetchone()[0] for c in curs]
                    assert got == [2 * (cid * 100 + i) for i in range(20)], got
                try:   # an error mid-pipeline: PostgreSQL skips the rest up to the Sync
                    with conn.pipeline() as p:
                        conn.execute("SELECT %s::int8", (1,))
                        conn.execute("SELECT 1 / %s::int4", (0,))
                        conn.execute("SELECT %s::int8 + 1", (2,))
                        p.sync()
                except psycopg.errors.DivisionByZero:
                    pass
                else:
                    raise AssertionError("no division by zero")
                # The skipped statement was never prepared: it must be prepared now.
                assert conn.execute("SELECT %s::int8 + 1", (5,)).fetchone()[0] == 6
                with conn.transaction():
                    with conn.cursor(name=f"cur{cid}") as cur:
                        cur.itersize = 7
                        cur.execute("SELECT g FROM generate_series(1, %s) g", (50,))
                        assert sum(x[0] for x in cur) == 1275
    except Exception as e:
        errors.append(f"client {cid}: {e!r}")
ts = [threading.Thread(target=client, args=(c,)) for c in range(20)]
[t.start() for t in ts]; [t.join() for t in ts]
print("\n".join(errors[:10]))
assert not errors, f"{len(errors)} psycopg pipeline clients failed"
print("ALL OK")
"#;

/// Pipelines over many statements with a server set of 5 (`max_prepared_statements = 5`): every
/// batch evicts and prepares again, and some fail mid-batch while evictions are in flight.
const PSYCOPG_EVICTIONS: &str = r#"
import os, random, threading, psycopg
dsn = os.environ["PGRING_DSN"]
errors = []
def client(cid):
    rnd = random.Random(cid)
    try:
        with psycopg.connect(dsn, autocommit=True, prepare_threshold=0) as conn:
            for r in range(30):
                k = rnd.randrange(12)
                with conn.pipeline() as p:
                    curs = [conn.execute(f"SELECT %s::int8 * {k + j}", (i,)) for j in range(3) for i in range(3)]
                    p.sync()
                    got = [c.fetchone()[0] for c in curs]
                    assert got == [i * (k + j) for j in range(3) for i in range(3)], got
                if r % 5 == 0:
                    try:
                        with conn.pipeline() as p:
                            conn.execute(f"SELECT %s::int8 + {k}", (1,))
                            conn.execute("SELECT 1 / %s::int4", (0,))
                            conn.execute(f"SELECT %s::int8 - {k}", (2,))
                            p.sync()
                    except psycopg.errors.DivisionByZero:
                        pass
                assert conn.execute(f"SELECT %s::int8 - {k}", (5,)).fetchone()[0] == 5 - k
                with conn.transaction():
                    for j in range(4):
                        assert conn.execute(f"SELECT %s::int8 * {k + j}", (2,)).fetchone()[0] == 2 * (k + j)
    except Exception as e:
        errors.append(f"client {cid}: {e!r}")
ts = [threading.Thread(target=client, args=(c,)) for c in range(20)]
[t.start() for t in ts]; [t.join() for t in ts]
print("\n".join(errors[:10]))
assert not errors, f"{len(errors)} psycopg eviction clients failed"
print("ALL OK")
"#;

const ASYNCPG: &str = r#"
import os, asyncio, asyncpg
dsn = os.environ["PGRING_DSN"]
async def client(cid):
    conn = await asyncpg.connect(dsn)   # statement_cache_size: default (100)
    try:
        stmt = await conn.prepare("SELECT $1::int8 + $2::int8")
        for i in range(40):
            v = await conn.fetchval("SELECT $1::int8 + 1", cid * 1000 + i)
            assert v == cid * 1000 + i + 1, v
            row = await conn.fetchrow("SELECT $1::text AS t, $2::int4 AS n", f"c{cid}", i)
            assert (row["t"], row["n"]) == (f"c{cid}", i), row
            assert await stmt.fetchval(i, cid) == i + cid
            if i % 10 == 0:
                async with conn.transaction():
                    await conn.execute("SELECT $1::int8", i)
                    assert await conn.fetchval("SELECT $1::int8 * 3", i) == 3 * i
            if i % 20 == 0:
                async with conn.transaction():   # COPY in the extended protocol
                    await conn.execute("CREATE TEMP TABLE c (id int, t text) ON COMMIT DROP")
                    await conn.copy_records_to_table("c", records=[(n, f"c{cid}") for n in range(500)])
                    assert await conn.fetchval("SELECT sum(id) FROM c") == 124750
        # executemany pipelines Bind/Execute pairs under one Sync; a row fails mid-way.
        try:
            await conn.executemany("SELECT 1 / $1::int4", [(1,), (0,), (2,)])
        except asyncpg.DivisionByZeroError:
            pass
        else:
            raise AssertionError("no division by zero")
        assert await conn.fetchval("SELECT $1::int4 * 7", cid) == 7 * cid
        async with conn.transaction():   # a cursor, and a savepoint that fails
            try:
                async with conn.transaction():
                    await conn.execute("SELECT 1/0")
            except asyncpg.DivisionByZeroError:
                pass
            total = 0
            async for rec in conn.cursor("SELECT g FROM generate_series(1, 100) g", prefetch=17):
                total += rec["g"]
            assert total == 5050, total
    finally:
        await conn.close()
async def main():
    results = await asyncio.gather(*(client(c) for c in range(20)), return_exceptions=True)
    errors = [f"client {c}: {r!r}" for c, r in enumerate(results) if isinstance(r, BaseException)]
    print("\n".join(errors[:10]))
    assert not errors, f"{len(errors)} asyncpg clients failed"
    print("ALL OK")
asyncio.run(main())
"#;

/// node-postgres: a query with a `name` is parsed once per connection and then only bound, so
/// it breaks behind a pooler that does not track prepared statements.
const NODE_POSTGRES: &str = r#"
const { Client } = require('pg');
const Cursor = require('pg-cursor');
const assert = require('assert');
/// A cursor (a portal read in pieces by Execute with a row limit): the server stays with the
/// client until the portal's Sync.
async function readCursor(c, n, batch) {
  const cur = c.query(new Cursor('SELECT g FROM generate_series(1, $1::int) g', [n]));
  let total = 0, rows;
  do { rows = await cur.read(batch); for (const x of rows) total += x.g; } while (rows.length);
  await cur.close();
  assert.strictEqual(total, n * (n + 1) / 2);
}
async function client(cid) {
  const c = new Client({ connectionString: process.env.PGRING_DSN });
  await c.connect();
  try {
    await readCursor(c, 30, 7);
    await c.query('BEGIN');
    await readCursor(c, 100, 13);
    await c.query('COMMIT');
    for (let i = 0; i < 40; i++) {
      const n = cid * 1000 + i;
      const r = await c.query({ name: 'double', text: 'SELECT $1::int8 * 2 AS v, $2::text AS t', values: [n, `c${cid}`] });
      assert.deepStrictEqual(r.rows[0], { v: String(2 * n), t: `c${cid}` });
      if (i % 10 === 5) {
        // An error in a named statement: the statement and the connection stay usable.
        await assert.rejects(
          c.query({ name: 'div', text: 'SELECT 1 / $1::int4 AS q', values: [0] }),
          (e) => e.code === '22012');
        const q = await c.query({ name: 'div', text: 'SELECT 1 / $1::int4 AS q', values: [1] });
        assert.strictEqual(q.rows[0].q, 1);
      }
      if (i % 8 === 0) {
        await c.query('BEGIN');
        const a = await c.query({ name: 'pid', text: 'SELECT pg_backend_pid() AS p, $1::int4 AS i', values: [i] });
        const b = await c.query({ name: 'pid', text: 'SELECT pg_backend_pid() AS p, $1::int4 AS i', values: [i] });
        await c.query('COMMIT');
        assert.strictEqual(a.rows[0].p, b.rows[0].p, 'a transaction moved between servers');
      }
    }
  } finally {
    await c.end();
  }
}
(async () => {
  const results = await Promise.allSettled([...Array(20).keys()].map(client));
  const errors = results.flatMap((r, c) => r.status === 'rejected' ? [`client ${c}: ${r.reason}`] : []);
  console.log(errors.slice(0, 10).join('\n'));
  if (errors.length) { console.log(`${errors.length} node-postgres clients failed`); process.exit(1); }
  console.log('ALL OK');
})().catch((e) => { console.log(e); process.exit(1); });
"#;

/// postgres.js: every query is a named prepared statement (`prepare: true`), and a connection
/// pipelines the queries of concurrent callers.
const POSTGRES_JS: &str = r#"
const postgres = require('postgres');
const assert = require('assert');
const sql = postgres(process.env.PGRING_DSN, { max: 10 });
async function client(cid) {
  for (let i = 0; i < 40; i++) {
    const n = cid * 1000 + i;
    const [r] = await sql`SELECT ${n}::int8 * 2 AS v, ${'c' + cid}::text AS t`;
    assert.deepStrictEqual({ ...r }, { v: String(2 * n), t: `c${cid}` });
    if (i % 10 === 5) {
      await assert.rejects(sql`SELECT 1 / ${0}::int4 AS q`, (e) => e.code === '22012');
    }
    if (i % 8 === 0) {
      const [a, b] = await sql.begin(async (tx) => [
        (await tx`SELECT pg_backend_pid() AS p, ${i}::int4 AS i`)[0],
        (await tx`SELECT pg_backend_pid() AS p, ${i}::int4 AS i`)[0],
      ]);
      assert.strictEqual(a.p, b.p, 'a transaction moved between servers');
    }
  }
  // A cursor and a savepoint that fails, in a transaction.
  const total = await sql.begin(async (tx) => {
    await tx.savepoint(async (sp) => { await sp`SELECT 1 / ${0}::int4`; })
      .then(() => assert.fail('no division by zero'), (e) => assert.strictEqual(e.code, '22012'));
    let t = 0;
    for await (const rows of tx`SELECT g FROM generate_series(1, ${100}::int4) g`.cursor(9)) {
      for (const x of rows) t += x.g;
    }
    return t;
  });
  assert.strictEqual(total, 5050);
}
(async () => {
  const results = await Promise.allSettled([...Array(20).keys()].map(client));
  await sql.end();
  const errors = results.flatMap((r, c) => r.status === 'rejected' ? [`client ${c}: ${r.reason}`] : []);
  console.log(errors.slice(0, 10).join('\n'));
  if (errors.length) { console.log(`${errors.length} postgres.js clients failed`); process.exit(1); }
  console.log('ALL OK');
})().catch((e) => { console.log(e); process.exit(1); });
"#;

/// pgJDBC: a PreparedStatement becomes a named server-side statement (`S_n`) from its fifth run
/// (`prepareThreshold`); a batch sends many Bind/Execute pairs before one Sync; a fetch size
/// reads a portal in pieces.
const JDBC: &str = r#"
import java.sql.*;
import java.util.*;
import java.util.concurrent.*;

public class Drivers {
    public static void main(String[] args) throws Exception {
        String url = System.getenv("PGRING_JDBC_URL");
        ExecutorService threads = Executors.newFixedThreadPool(20);
        List<Future<?>> clients = new ArrayList<>();
        for (int c = 0; c < 20; c++) {
            final int cid = c;
            clients.add(threads.submit(() -> { client(url, cid); return null; }));
        }
        List<String> errors = new ArrayList<>();
        for (int c = 0; c < 20; c++) {
            try { clients.get(c).get(); }
            catch (ExecutionException e) { errors.add("client " + c + ": " + e.getCause()); }
        }
        threads.shutdown();
        errors.stream().limit(10).forEach(System.out::println);
        if (!errors.isEmpty()) {
            System.out.println(errors.size() + " JDBC clients failed");
            System.exit(1);
        }
        System.out.println("ALL OK");
    }

    static void check(boolean ok, String what) {
        if (!ok) throw new IllegalStateException(what);
    }

    static void client(String url, int cid) throws SQLException {
        try (Connection c = DriverManager.getConnection(url)) {
            try (PreparedStatement ps = c.prepareStatement("SELECT ?::int8 * 2, ?::text")) {
                for (int i = 0; i < 40; i++) {
                    long n = cid * 1000L + i;
                    ps.setLong(1, n);
                    ps.setString(2, "c" + cid);
                    try (ResultSet rs = ps.executeQuery()) {
                        check(rs.next(), "no row");
                        check(rs.getLong(1) == 2 * n, "got " + rs.getLong(1) + " for " + n);
                        check(rs.getString(2).equals("c" + cid), "got " + rs.getString(2));
                    }
                }
            }
            // An error in a server-side statement: it and the connection stay usable.
            try (PreparedStatement div = c.prepareStatement("SELECT 1 / ?::int4")) {
                for (int i = 0; i < 12; i++) {
                    div.setInt(1, i % 4 == 0 ? 0 : 1);
                    try (ResultSet rs = div.executeQuery()) {
                        check(i % 4 != 0, "no division by zero");
                        check(rs.next() && rs.getInt(1) == 1, "wrong quotient");
                    } catch (SQLException e) {
                        if (!"22012".equals(e.getSQLState())) throw e;
                    }
                }
            }
            // A transaction with a batch: one server throughout.
            c.setAutoCommit(false);
            try (Statement st = c.createStatement()) {
                st.execute("CREATE TEMP TABLE batch (cid int, i int) ON COMMIT DROP");
            }
            try (PreparedStatement ins = c.prepareStatement("INSERT INTO batch VALUES (?, ?)")) {
                for (int i = 0; i < 50; i++) {
                    ins.setInt(1, cid);
                    ins.setInt(2, i);
                    ins.addBatch();
                }
                check(ins.executeBatch().length == 50, "batch count");
            }
            try (PreparedStatement n = c.prepareStatement("SELECT count(*), sum(i) FROM batch WHERE cid = ?")) {
                n.setInt(1, cid);
                try (ResultSet rs = n.executeQuery()) {
                    check(rs.next() && rs.getLong(1) == 50 && rs.getLong(2) == 1225, "batch lost rows");
                }
            }
            // A fetch size makes pgJDBC read through a portal (Execute with a row limit).
            try (PreparedStatement q = c.prepareStatement("SELECT g FROM generate_series(1, ?) g")) {
                q.setFetchSize(7);
                q.setInt(1, 100);
                long sum = 0;
                try (ResultSet rs = q.executeQuery()) {
                    while (rs.next()) sum += rs.getLong(1);
                }
                check(sum == 5050, "fetched " + sum);
            }
            c.commit();
        }
    }
}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg3_default_prepare_threshold_20_clients_over_4_servers() {
    let user = pg().fresh_user("psycopg");
    run_python(&pooler(), &user, PSYCOPG, "psycopg").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg3_pipeline_mode_with_an_error_mid_batch_20_clients_over_4_servers() {
    let user = pg().fresh_user("psycopgpipe");
    run_python(&pooler(), &user, PSYCOPG_PIPELINE, "psycopg pipeline").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg3_pipelines_over_a_server_set_of_5_statements() {
    let user = pg().fresh_user("psycopgevict");
    let pgring = pooler_with("max_prepared_statements = 5");
    run_python(&pgring, &user, PSYCOPG_EVICTIONS, "psycopg evictions").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_default_statement_cache_20_clients_over_4_servers() {
    let user = pg().fresh_user("asyncpg");
    run_python(&pooler(), &user, ASYNCPG, "asyncpg").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_postgres_named_queries_20_clients_over_4_servers() {
    let user = pg().fresh_user("nodepg");
    run_node(&pooler(), &user, NODE_POSTGRES, "node-postgres").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_js_default_prepare_20_clients_over_4_servers() {
    let user = pg().fresh_user("postgresjs");
    run_node(&pooler(), &user, POSTGRES_JS, "postgres.js").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgjdbc_default_prepare_threshold_and_batch_20_clients_over_4_servers() {
    assert!(
        Path::new(JDBC_JAR).exists(),
        "pgJDBC not found at {JDBC_JAR} (apt-get install -y libpostgresql-jdbc-java; scripts/test \
         installs it when run as root)"
    );
    let user = pg().fresh_user("pgjdbc");
    let dir = scratch("jdbc");
    std::fs::create_dir_all(&dir).expect("creating the jdbc scratch dir");
    let source = dir.join("Drivers.java");
    std::fs::write(&source, JDBC).expect("writing Drivers.java");
    let pgring = pooler();
    let mut cmd = timed("java");
    cmd.args(["-cp", JDBC_JAR]).arg(source).env(
        "PGRING_JDBC_URL",
        format!(
            "jdbc:postgresql://127.0.0.1:{}/app?user={user}",
            pgring.port
        ),
    );
    run_script(cmd, &pgring, &user, "pgJDBC").await;
}
