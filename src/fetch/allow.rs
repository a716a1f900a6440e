//! Which hosts and addresses a flow's requests may reach.
//!
//! An entry is a host name (`api.example.com`), a wildcard for its
//! subdomains (`*.example.com`: `a.example.com`, not `example.com`), or an
//! address or network (`203.0.113.7`, `10.20.0.0/16`, `::1`). A request's host
//! must match a name entry, or, written as an address, fall in an address
//! entry. Then every address it resolves to (and every address a redirect
//! leads to) must be public, or fall in an address entry: loopback, private,
//! link-local (where clouds keep their metadata service), shared, unique-local
//! and unspecified addresses are refused unless listed. So `localhost` needs
//! both `localhost` and `127.0.0.1` in the list.

use ipnet::IpNet;
use std::net::IpAddr;

/// Hosts and networks requests may reach (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct AllowList {
    /// Host names, lower-case; `*.` first for a wildcard.
    names: Vec<String>,
    /// Addresses and networks.
    nets: Vec<IpNet>,
}

impl AllowList {
    /// Parses entries; the first bad one's error (with its index).
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<AllowList, (usize, String)> {
        let mut list = AllowList::default();
        for (i, e) in entries.iter().enumerate() {
            list.add(e.as_ref()).map_err(|m| (i, m))?;
        }
        Ok(list)
    }

    fn add(&mut self, entry: &str) -> Result<(), String> {
        let e = entry.trim();
        if let Ok(net) = e.parse::<IpNet>() {
            self.nets.push(net.trunc());
            return Ok(());
        }
        if let Ok(ip) = e
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            self.nets.push(IpNet::from(ip));
            return Ok(());
        }
        let name = e.strip_prefix("*.").unwrap_or(e);
        let valid = !name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !valid || e.contains("://") || e.contains('/') || e.contains(':') {
            return Err(format!(
                "`{entry}` is not a host name, `*.domain`, an address or a network (write `api.example.com`, `*.example.com`, `10.0.0.0/8`; no scheme, port or path)"
            ));
        }
        self.names.push(e.to_ascii_lowercase());
        Ok(())
    }

    /// This list and `other` together.
    pub fn union(&self, other: &AllowList) -> AllowList {
        let mut out = self.clone();
        for n in &other.names {
            if !out.names.contains(n) {
                out.names.push(n.clone());
            }
        }
        for n in &other.nets {
            if !out.nets.contains(n) {
                out.nets.push(*n);
            }
        }
        out
    }

    /// Whether nothing is allowed.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty() && self.nets.is_empty()
    }

    /// Whether a host as written in a URL (a name, or an address) may be
    /// called; the reason it may not.
    pub fn check_host(&self, host: &url::Host<&str>) -> Result<(), String> {
        match host {
            url::Host::Domain(d) => {
                let d = d.trim_end_matches('.').to_ascii_lowercase();
                let ok = self.names.iter().any(|n| match n.strip_prefix("*.") {
                    Some(base) => d.len() > base.len() + 1 && d.ends_with(&format!(".{base}")),
                    None => *n == d,
                });
                match ok {
                    true => Ok(()),
                    false => Err(format!(
                        "host `{d}` is not in settings.http.allow or the process's http.allow"
                    )),
                }
            }
            url::Host::Ipv4(ip) => self.check_listed((*ip).into()),
            url::Host::Ipv6(ip) => self.check_listed((*ip).into()),
        }
    }

    fn check_listed(&self, ip: IpAddr) -> Result<(), String> {
        match self.nets.iter().any(|n| n.contains(&canonical(ip))) {
            true => Ok(()),
            false => Err(format!(
                "address {ip} is not in settings.http.allow or the process's http.allow"
            )),
        }
    }

    /// Whether a resolved address may be connected to: a public one, or one
    /// the list names.
    pub fn check_addr(&self, ip: IpAddr) -> Result<(), String> {
        let ip = canonical(ip);
        match special(ip) {
            None => Ok(()),
            Some(_) if self.nets.iter().any(|n| n.contains(&ip)) => Ok(()),
            Some(kind) => Err(format!(
                "{ip} is a {kind} address; list it (or its network) in http.allow to call it"
            )),
        }
    }
}

/// An IPv4 address written as IPv6 (`::ffff:127.0.0.1`) as the IPv4 one.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => ip,
        },
        v4 => v4,
    }
}

/// What kind of non-public address this is, if it is one.
fn special(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            if v4.is_loopback() {
                Some("loopback")
            } else if v4.is_private() {
                Some("private")
            } else if v4.is_link_local() {
                Some("link-local (cloud metadata)")
            } else if v4.is_unspecified() || o[0] == 0 {
                Some("unspecified")
            } else if o[0] == 100 && (64..128).contains(&o[1]) {
                Some("shared (carrier-grade NAT)")
            } else if v4.is_broadcast() || v4.is_multicast() || o[0] >= 240 {
                Some("broadcast, multicast or reserved")
            } else if o[0] == 192 && o[1] == 0 && o[2] == 0 {
                Some("protocol-assignment")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            if v6.is_loopback() {
                Some("loopback")
            } else if v6.is_unspecified() {
                Some("unspecified")
            } else if s[0] & 0xfe00 == 0xfc00 {
                Some("unique-local (private)")
            } else if s[0] & 0xffc0 == 0xfe80 {
                Some("link-local")
            } else if v6.is_multicast() {
                Some("multicast")
            } else if s[0] == 0x64 && s[1] == 0xff9b {
                // NAT64 could reach any IPv4 address, private ones too.
                Some("NAT64")
            } else {
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(s: &str) -> url::Url {
        url::Url::parse(&format!("http://{s}/")).unwrap()
    }

    #[test]
    fn names_wildcards_and_networks() {
        let l = AllowList::parse(&["api.example.com", "*.shop.test", "10.1.0.0/16", "127.0.0.1"])
            .unwrap();
        let ok = |s: &str| l.check_host(&host(s).host().unwrap()).is_ok();
        assert!(ok("api.example.com"));
        assert!(ok("API.Example.com"));
        assert!(!ok("example.com"));
        assert!(!ok("api.example.com.evil.test"));
        assert!(ok("a.shop.test"));
        assert!(ok("a.b.shop.test"));
        assert!(!ok("shop.test"));
        assert!(!ok("evilshop.test"));
        assert!(ok("10.1.2.3"));
        assert!(!ok("10.2.0.1"));
        assert!(ok("127.0.0.1"));
        assert!(!ok("127.0.0.2"));
        assert!(!ok("[::1]"));
    }

    #[test]
    fn non_public_addresses_are_refused_unless_listed() {
        let l = AllowList::parse(&["api.example.com", "10.1.0.0/16"]).unwrap();
        for bad in [
            "127.0.0.1",
            "10.2.0.1",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::",
        ] {
            let e = l.check_addr(bad.parse().unwrap()).unwrap_err();
            assert!(e.contains("http.allow"), "{bad}: {e}");
        }
        for good in ["93.184.216.34", "2606:2800:220:1::1", "10.1.200.3"] {
            assert!(l.check_addr(good.parse().unwrap()).is_ok(), "{good}");
        }
    }

    #[test]
    fn bad_entries_say_what_to_write() {
        for bad in [
            "https://api.example.com",
            "api.example.com:443",
            "a/b",
            "",
            "*.",
        ] {
            let (i, e) = AllowList::parse(&["ok.test", bad]).unwrap_err();
            assert_eq!(i, 1);
            assert!(e.contains("api.example.com"), "{e}");
        }
    }
}
