//! A private PostgreSQL cluster for tests that stop, kill and restart the
//! database, or replicate it: never the machine's shared server, which other
//! tests use. `initdb` into a temporary directory, `pg_ctl` on a free port,
//! run as the `postgres` OS user when the test runs as root (PostgreSQL
//! refuses root); stopped and removed when dropped.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

/// Where Debian puts the server binaries; `FHIRGATE_TEST_PG_BIN` overrides.
fn bin(name: &str) -> PathBuf {
    let dir = std::env::var("FHIRGATE_TEST_PG_BIN")
        .unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into());
    Path::new(&dir).join(name)
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// Runs a PostgreSQL tool, as `postgres` when we are root; panics with its
/// output unless it succeeds.
fn run(tool: &str, args: &[&str]) -> Output {
    let output = if running_as_root() {
        Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(bin(tool))
            .args(args)
            .output()
    } else {
        Command::new(bin(tool)).args(args).output()
    }
    .unwrap_or_else(|e| panic!("cannot run {tool}: {e}"));
    assert!(
        output.status.success(),
        "{tool} {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One running cluster: its directory (data, log, socket) and port.
pub struct Cluster {
    dir: PathBuf,
    pub port: u16,
}

impl Cluster {
    /// A new cluster, started. `fsync` is off: the tests kill PostgreSQL,
    /// never the machine, and what a killed server wrote stays in the page cache.
    pub fn start() -> Cluster {
        let cluster = Cluster::empty();
        run(
            "initdb",
            &[
                "-D",
                &cluster.data(),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        cluster.boot();
        cluster
    }

    /// A streaming replica of `primary` (`pg_basebackup -R`), started on a
    /// port of its own.
    pub fn replica_of(primary: &Cluster) -> Cluster {
        let cluster = Cluster::empty();
        run(
            "pg_basebackup",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &primary.port.to_string(),
                "-U",
                "postgres",
                "-D",
                &cluster.data(),
                "-R",
                "-X",
                "stream",
                // A spread checkpoint would take minutes.
                "-c",
                "fast",
                "--no-sync",
            ],
        );
        cluster.boot();
        cluster
    }

    fn empty() -> Cluster {
        let dir = std::env::temp_dir().join(format!("fhirgate-pg-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir(&dir).unwrap();
        if running_as_root() {
            let status = Command::new("chown")
                .args(["postgres:postgres", dir.to_str().unwrap()])
                .status()
                .unwrap();
            assert!(status.success(), "chown of {dir:?} failed");
        }
        Cluster {
            dir,
            port: free_port(),
        }
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    /// `postgres://postgres@127.0.0.1:<port>/<database>`.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// `pg_ctl start`, waiting until it accepts connections.
    pub fn boot(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("log").display().to_string();
        run(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-o",
                &options,
                "-l",
                &log,
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
    }

    /// `pg_ctl stop -m fast`: sessions are ended, a clean shutdown.
    pub fn stop(&self) {
        run("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"]);
    }

    /// `pg_ctl stop -m immediate`: every process quits at once, as in a
    /// crash; the next start recovers from the WAL.
    pub fn kill(&self) {
        run(
            "pg_ctl",
            &["-D", &self.data(), "-m", "immediate", "-w", "stop"],
        );
    }

    /// `pg_ctl restart -m fast`.
    pub fn restart(&self) {
        self.stop();
        self.boot();
    }

    /// The server log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    /// A direct connection to `database`, for setup and assertions.
    pub async fn connect(&self, database: &str) -> tokio_postgres::Client {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match tokio_postgres::connect(&self.url(database), tokio_postgres::NoTls).await {
                Ok((client, connection)) => {
                    tokio::spawn(connection);
                    return client;
                }
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("cannot connect to the private cluster: {e}"),
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Already stopped is fine; then remove everything.
        let data = self.data();
        let mut stop = if running_as_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(bin("pg_ctl"));
            command
        } else {
            Command::new(bin("pg_ctl"))
        };
        let _ = stop
            .args(["-D", &data, "-m", "immediate", "-w", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
