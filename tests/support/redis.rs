//! A private `redis-server` on a loopback port (no persistence), killed by its own PID.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, require, wait_for, which};

pub const TOOLS: &[&str] = &["redis-server"];

pub struct RedisServer {
    child: Child,
    pub port: u16,
}

impl RedisServer {
    /// `None` when redis-server is missing outside CI (under `CI=true` that panics).
    pub fn start() -> Option<RedisServer> {
        RedisServer::start_on(None)
    }

    /// On `port` (to restart a killed server where its clients expect it).
    pub fn start_on(port: Option<u16>) -> Option<RedisServer> {
        if !require(TOOLS, false) {
            return None;
        }
        let port = port.unwrap_or_else(free_port);
        let child = Command::new(which("redis-server").expect("redis-server"))
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        let server = RedisServer { child, port };
        server.wait_ready();
        Some(server)
    }

    /// Readiness: redis answers PING.
    pub fn wait_ready(&self) {
        wait_for(
            Duration::from_secs(10),
            "redis-server to answer PING",
            || {
                let c = redis::Client::open(self.url()).ok()?;
                let mut con = c.get_connection().ok()?;
                redis::cmd("PING").query::<String>(&mut con).ok()
            },
        );
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
