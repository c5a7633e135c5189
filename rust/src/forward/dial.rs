//! Connecting to the secondary: every address of its name in turn, from the
//! replication LAN's address when one is configured.

use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};

use super::Config;
use crate::error::{MirrorError, Result};

pub(super) fn dial(cfg: &Config) -> Result<TcpStream> {
    let addrs: Vec<SocketAddr> = (cfg.peer.as_str(), cfg.port).to_socket_addrs()?.collect();
    let mut last = None;
    for addr in addrs {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            None,
        )?;
        if let Some(bind) = &cfg.bind_addr {
            let ip: IpAddr = bind.parse().map_err(|_| {
                MirrorError::InvalidArgument(format!("bind_addr {bind:?} is not an IP address"))
            })?;
            socket.bind(&SocketAddr::new(ip, 0).into())?;
        }
        match socket.connect_timeout(&addr.into(), cfg.connect_timeout) {
            Ok(()) => return Ok(socket.into()),
            Err(e) => last = Some(e),
        }
    }
    Err(last.map_or_else(
        || MirrorError::InvalidArgument(format!("no address for {:?}", cfg.peer)),
        Into::into,
    ))
}
