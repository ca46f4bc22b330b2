//! Connecting from a chosen loopback address without paying for it: `bind(addr:0)`
//! makes the kernel pick a port at bind time, searching every port bucket in use, and
//! with ten thousand flood sockets open that search cost milliseconds of system time per
//! connection (it showed as the load generator's own CPU, not the server's).
//! `IP_BIND_ADDRESS_NO_PORT` defers the port to `connect`, which picks it by the
//! four-tuple, as an unbound socket does.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;

use tokio::net::TcpSocket;

/// A socket for `target`, bound to `source` (port chosen at connect) when given.
pub fn socket_from(source: Option<IpAddr>, target: SocketAddr) -> std::io::Result<TcpSocket> {
    let sock = match target {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if let Some(src) = source {
        let on: libc::c_int = 1;
        // SAFETY: setsockopt on a socket this function owns, with a c_int option value.
        let rc = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        sock.bind(SocketAddr::new(src, 0))?;
    }
    Ok(sock)
}
