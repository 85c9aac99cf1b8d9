//! The transport protocols Kubernetes names in ports (Services, EndpointSlices,
//! NetworkPolicies): one type for every component that reads them.

/// `TCP`, `UDP` or `SCTP`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// TCP (the API's default).
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Protocol {
    /// The IP protocol number (6, 17, 132).
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }

    /// Lower-case name (`tcp`, `udp`, `sctp`), as nft writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }

    /// The API's name (`TCP`, `UDP`, `SCTP`); `None` for anything else.
    pub fn parse(s: &str) -> Option<Protocol> {
        match s {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }

    /// An optional field of the API: TCP when absent.
    pub fn parse_or_tcp(s: Option<&str>) -> Option<Protocol> {
        Protocol::parse(s.unwrap_or("TCP"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers() {
        assert_eq!(Protocol::parse_or_tcp(None), Some(Protocol::Tcp));
        assert_eq!(Protocol::parse("SCTP").map(Protocol::number), Some(132));
        assert_eq!(Protocol::parse("udp"), None);
        assert_eq!(Protocol::Udp.as_str(), "udp");
    }
}
