//! Network vocabulary of the runtime: address blocks, as the config names
//! transparent destinations and the capture tooling names excluded ones.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// Why a string is not an address block.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not an IP address or CIDR: {reason}")]
pub struct CidrError {
    pub value: String,
    pub reason: String,
}

/// An address block: `10.0.0.0/8`, `fd00::/8`, or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    /// True when `ip` lies inside this block (never across families).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u32::MAX << (32 - self.prefix)
                };
                u32::from(net) == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u128::MAX << (128 - self.prefix)
                };
                u128::from(net) == u128::from(ip) & mask
            }
            _ => false,
        }
    }

    /// Parses a comma-separated list; empty string is an empty list.
    pub fn parse_list(s: &str) -> Result<Vec<Cidr>, CidrError> {
        if s.trim().is_empty() {
            return Ok(Vec::new());
        }
        s.split(',').map(|item| item.trim().parse()).collect()
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason: &str| CidrError {
            value: s.to_owned(),
            reason: reason.to_owned(),
        };
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad("not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse::<u8>().map_err(|_| bad("prefix out of range"))?
            }
            Some(_) => return Err(bad("prefix is not a number")),
        };
        if prefix > max {
            return Err(bad("prefix out of range"));
        }
        // Host bits set (10.1.2.3/8) are refused rather than masked: the
        // author probably meant something else, and iptables would
        // silently widen or narrow what they wrote.
        let host_bits_set = match addr {
            IpAddr::V4(a) => {
                let bits = u32::from(a);
                prefix < 32 && bits & (u32::MAX >> prefix) != 0
            }
            IpAddr::V6(a) => {
                let bits = u128::from(a);
                prefix < 128 && bits & (u128::MAX >> prefix) != 0
            }
        };
        if host_bits_set {
            return Err(bad("address has bits set beyond the prefix"));
        }
        Ok(Cidr { addr, prefix })
    }
}

impl<'de> serde::Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse()
            .map_err(|e: CidrError| serde::de::Error::custom(e.to_string()))
    }
}

impl serde::Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[cfg(test)]
mod tests;
