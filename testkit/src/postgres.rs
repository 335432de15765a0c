//! A throwaway PostgreSQL server for tests (feature `postgres`).
//!
//! [`PgServer::start`] runs `initdb` in a fresh temporary directory and starts `postgres` on
//! `127.0.0.1` and a free port, with its unix socket inside that directory. It only ever listens
//! on loopback. [`PgServer::shared`] starts one server per test binary, the first time a test
//! asks for it; tests then keep apart by using their own schema (or database).
//!
//! # Binaries and users
//!
//! The PostgreSQL binaries are taken from `$ANNALS_PG_BIN`, else `/usr/lib/postgresql/15/bin`.
//! PostgreSQL refuses to run as root, so when the tests run as root, `initdb`, `pg_ctl` and the
//! server run as the `postgres` user (through `runuser`), and the temporary directory is handed
//! to that user.
//!
//! # No leaked servers
//!
//! A server is stopped and its directory removed when the [`PgServer`] is dropped. A server kept
//! in a `static` (as [`PgServer::shared`] does) is never dropped, and a test binary may also die
//! from a signal, so each server also gets a *watchdog*: a small `sh` process in its own session
//! whose standard input is a pipe held open by the test process. When the test process ends, in
//! whatever way, the kernel closes the pipe; the watchdog reads end-of-file, stops the server
//! (`pg_ctl stop -m immediate`) and removes the directory. Nothing polls.
//!
//! The server runs with `fsync=off` and `full_page_writes=off`: a test server never needs to
//! survive an operating-system crash, and a clean `pg_ctl restart` loses nothing with them. It
//! also runs with `autovacuum=off`, so no background transaction the test did not start is ever
//! running (which matters to stores whose readers wait for older transactions to end).
//!
//! ```no_run
//! use annals_testkit::postgres::PgServer;
//!
//! let server = PgServer::shared();
//! let url = server.connection_string(); // "host=127.0.0.1 port=… user=postgres dbname=postgres"
//! # let _ = url;
//! ```

use std::io;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};

/// Where the PostgreSQL binaries are looked for when `$ANNALS_PG_BIN` is not set.
pub const DEFAULT_PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// The environment variable naming the folder of the PostgreSQL binaries.
pub const PG_BIN_ENV: &str = "ANNALS_PG_BIN";

/// How long `pg_ctl` may wait for a start, stop or restart, in seconds (a hang guard).
const PG_CTL_WAIT_SECS: &str = "60";

/// A PostgreSQL server in a temporary directory on `127.0.0.1`, stopped and removed on drop.
#[derive(Debug)]
pub struct PgServer {
    port: u16,
    bin: PathBuf,
    /// `Some("postgres")` when the tests run as root.
    run_as: Option<String>,
    root: Option<tempfile::TempDir>,
    root_path: PathBuf,
    watchdog: Mutex<Option<(Child, ChildStdin)>>,
}

impl PgServer {
    /// Starts a new server: `initdb` (trust authentication, superuser `postgres`) in a fresh
    /// temporary directory, then `postgres` on `127.0.0.1` and a free port. Returns once the
    /// server accepts connections.
    ///
    /// # Errors
    ///
    /// Any failure to find the binaries, create the directory, initialise or start the server,
    /// with the tool's output in the message.
    pub fn start() -> io::Result<PgServer> {
        let bin = std::env::var_os(PG_BIN_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_PG_BIN));
        if !bin.join("postgres").exists() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "no PostgreSQL binaries in {} (set {PG_BIN_ENV} to their folder)",
                    bin.display()
                ),
            ));
        }
        let root = tempfile::Builder::new().prefix("annals-pg-").tempdir()?;
        let root_path = root.path().to_path_buf();
        let run_as = if current_uid()? == 0 {
            let (uid, gid) = (id_of("-u")?, id_of("-g")?);
            std::os::unix::fs::chown(&root_path, Some(uid), Some(gid))?;
            Some("postgres".to_owned())
        } else {
            None
        };
        let mut server = PgServer {
            port: 0,
            bin,
            run_as,
            root: Some(root),
            root_path,
            watchdog: Mutex::new(None),
        };
        server.arm_watchdog()?;
        std::fs::create_dir(server.socket_dir())?;
        if server.run_as.is_some() {
            let (uid, gid) = (id_of("-u")?, id_of("-g")?);
            std::os::unix::fs::chown(server.socket_dir(), Some(uid), Some(gid))?;
        }
        server.run(
            "initdb",
            &[
                "-D".as_ref(),
                server.data_dir().as_os_str(),
                "--auth=trust".as_ref(),
                "-U".as_ref(),
                "postgres".as_ref(),
                "--encoding=UTF8".as_ref(),
                "--locale=C".as_ref(),
                "--no-sync".as_ref(),
            ],
        )?;
        // A free port can be taken by someone else between our probe and the server's bind:
        // try a few.
        let mut last_error = None;
        for _ in 0..5 {
            server.port = free_port()?;
            match server.pg_ctl_start() {
                Ok(()) => return Ok(server),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| io::Error::other("could not start PostgreSQL")))
    }

    /// The server of this test binary, started the first time it is asked for and stopped by
    /// its watchdog when the process ends (see the [module docs](self)).
    ///
    /// # Panics
    ///
    /// When the server cannot start: the tests that need it cannot run.
    pub fn shared() -> &'static PgServer {
        static SHARED: OnceLock<PgServer> = OnceLock::new();
        SHARED.get_or_init(|| {
            PgServer::start().unwrap_or_else(|e| panic!("cannot start a test PostgreSQL: {e}"))
        })
    }

    /// The TCP port the server listens on (on `127.0.0.1`).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A `tokio-postgres` / libpq key-value connection string for the `postgres` database as the
    /// `postgres` superuser.
    pub fn connection_string(&self) -> String {
        self.connection_string_for("postgres")
    }

    /// Like [`connection_string`](Self::connection_string), for another database.
    pub fn connection_string_for(&self, database: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={database}",
            self.port
        )
    }

    /// The server's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.root_path.join("data")
    }

    /// Restarts the server like `pg_ctl restart -m fast`: open connections are cut, running
    /// transactions roll back, and the server comes back on the same port with the same data.
    /// Returns once it accepts connections again.
    ///
    /// # Errors
    ///
    /// When `pg_ctl` fails, with its output.
    pub fn restart(&self) -> io::Result<()> {
        self.run(
            "pg_ctl",
            &[
                "restart".as_ref(),
                "-D".as_ref(),
                self.data_dir().as_os_str(),
                "-m".as_ref(),
                "fast".as_ref(),
                "-w".as_ref(),
                "-t".as_ref(),
                PG_CTL_WAIT_SECS.as_ref(),
                "-l".as_ref(),
                self.root_path.join("server.log").as_os_str(),
            ],
        )?;
        self.wait_ready()
    }

    /// Stops the server (`pg_ctl stop -m fast`); [`resume`](Self::resume) starts it again.
    ///
    /// # Errors
    ///
    /// When `pg_ctl` fails, with its output.
    pub fn stop(&self) -> io::Result<()> {
        self.run(
            "pg_ctl",
            &[
                "stop".as_ref(),
                "-D".as_ref(),
                self.data_dir().as_os_str(),
                "-m".as_ref(),
                "fast".as_ref(),
                "-w".as_ref(),
                "-t".as_ref(),
                PG_CTL_WAIT_SECS.as_ref(),
            ],
        )
        .map(drop)
    }

    /// Starts a [stopped](Self::stop) server again, on the same port with the same data.
    ///
    /// # Errors
    ///
    /// When `pg_ctl` fails, with its output.
    pub fn resume(&self) -> io::Result<()> {
        self.pg_ctl_start()
    }

    /// The server's log so far (for failing tests to print).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root_path.join("server.log")).unwrap_or_default()
    }

    fn socket_dir(&self) -> PathBuf {
        self.root_path.join("sock")
    }

    fn pg_ctl_start(&self) -> io::Result<()> {
        let options = format!(
            "-c listen_addresses=127.0.0.1 -c port={} -c unix_socket_directories={} \
             -c fsync=off -c full_page_writes=off -c max_connections=200 -c autovacuum=off",
            self.port,
            self.socket_dir().display()
        );
        self.run(
            "pg_ctl",
            &[
                "start".as_ref(),
                "-D".as_ref(),
                self.data_dir().as_os_str(),
                "-w".as_ref(),
                "-t".as_ref(),
                PG_CTL_WAIT_SECS.as_ref(),
                "-l".as_ref(),
                self.root_path.join("server.log").as_os_str(),
                "-o".as_ref(),
                options.as_ref(),
            ],
        )?;
        self.wait_ready()
    }

    /// `pg_ctl -w` already waits for the server; `pg_isready` on the TCP address confirms that
    /// the address clients use answers (bounded by its own timeout).
    fn wait_ready(&self) -> io::Result<()> {
        let port = self.port.to_string();
        self.run(
            "pg_isready",
            &[
                "-h".as_ref(),
                "127.0.0.1".as_ref(),
                "-p".as_ref(),
                port.as_ref(),
                "-t".as_ref(),
                PG_CTL_WAIT_SECS.as_ref(),
            ],
        )
        .map(drop)
    }

    /// A command running the PostgreSQL tool `tool`, as the `postgres` user when we are root.
    fn command(&self, tool: &str) -> Command {
        let program = self.bin.join(tool);
        let mut command = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(program);
                c
            }
            None => Command::new(program),
        };
        // The caller's directory may be unreadable for the `postgres` user.
        command.current_dir(&self.root_path).stdin(Stdio::null());
        command
    }

    fn run(&self, tool: &str, args: &[&std::ffi::OsStr]) -> io::Result<Output> {
        let output = self.command(tool).args(args).output()?;
        if output.status.success() {
            Ok(output)
        } else {
            Err(io::Error::other(format!(
                "{tool} failed ({}): {}{}\n{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr),
                tail(&self.log(), 2000),
            )))
        }
    }

    /// Starts the watchdog described in the module docs.
    fn arm_watchdog(&mut self) -> io::Result<()> {
        let mut stop = self.command("pg_ctl");
        stop.arg("stop").arg("-D").arg(self.data_dir()).args([
            "-m",
            "immediate",
            "-w",
            "-t",
            PG_CTL_WAIT_SECS,
        ]);
        let mut argv: Vec<&std::ffi::OsStr> = vec![stop.get_program()];
        argv.extend(stop.get_args());
        // `$0` is the directory to remove, `$@` the stop command.
        let script = r#"read -r _ignored; "$@" >/dev/null 2>&1; rm -rf "$0""#;
        let mut child = Command::new("setsid")
            .arg("sh")
            .arg("-c")
            .arg(script)
            .arg(&self.root_path)
            .args(argv)
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| io::Error::other("the watchdog has no stdin"))?;
        *self.watchdog.lock().unwrap_or_else(|e| e.into_inner()) = Some((child, stdin));
        Ok(())
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = self.stop();
        if let Some(root) = self.root.take() {
            let _ = root.close();
        }
        // Closing the pipe lets the watchdog finish (it finds nothing left to do).
        if let Some((mut child, stdin)) = self
            .watchdog
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            drop(stdin);
            let _ = child.wait();
        }
    }
}

fn tail(text: &str, max: usize) -> &str {
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port())
}

fn current_uid() -> io::Result<u32> {
    use std::os::unix::fs::MetadataExt;
    // The owner of a file we just created is our effective uid.
    let probe = tempfile::tempfile()?;
    Ok(probe.metadata()?.uid())
}

/// `id -u postgres` / `id -g postgres`.
fn id_of(flag: &str) -> io::Result<u32> {
    let output = Command::new("id").args([flag, "postgres"]).output()?;
    if !output.status.success() {
        return Err(io::Error::other(
            "running as root, but there is no `postgres` user to run PostgreSQL as",
        ));
    }
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .map_err(|_| io::Error::other("`id` printed no number"))
}
