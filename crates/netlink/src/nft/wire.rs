//! Netlink framing for nf_tables: message headers, the nfgenmsg header and nested
//! type-length-value attributes, written straight into one byte buffer.
//!
//! Numbers come from the kernel's uapi headers: `linux/netlink.h`,
//! `linux/netfilter/nfnetlink.h` and `linux/netfilter/nf_tables.h`. Netlink headers are
//! in host byte order; nf_tables attribute *values* (u32, u64) are big-endian.

/// `struct nlmsghdr` is 16 bytes, `struct nfgenmsg` 4, `struct nlattr` 4.
pub(crate) const NLMSG_HDRLEN: usize = 16;
pub(crate) const NLA_HDRLEN: usize = 4;
/// Set on nested attributes, as libmnl does; the kernel accepts both forms.
const NLA_F_NESTED: u16 = 0x8000;

pub(crate) const NLM_F_REQUEST: u16 = 0x1;
pub(crate) const NLM_F_ACK: u16 = 0x4;
pub(crate) const NLM_F_CREATE: u16 = 0x400;
pub(crate) const NLM_F_APPEND: u16 = 0x800;
/// A dump: every object matching the request (NLM_F_ROOT | NLM_F_MATCH).
pub(crate) const NLM_F_DUMP: u16 = 0x300;
/// In a dump's message: the objects changed while the dump ran; dump again.
pub(crate) const NLM_F_DUMP_INTR: u16 = 0x10;
pub(crate) const NLMSG_DONE: u16 = 3;
/// In an NLMSG_ERROR: the echoed request was cut to its header (NETLINK_CAP_ACK).
pub(crate) const NLM_F_CAPPED: u16 = 0x100;
/// In an NLMSG_ERROR: extended-ack attributes follow (NETLINK_EXT_ACK).
pub(crate) const NLM_F_ACK_TLVS: u16 = 0x200;
pub(crate) const NLMSG_ERROR: u16 = 2;
pub(crate) const NLMSGERR_ATTR_MSG: u16 = 1;

/// nfnetlink: batch delimiters and the nf_tables subsystem id.
pub(crate) const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
pub(crate) const NFNL_MSG_BATCH_END: u16 = 0x11;
pub(crate) const NFNL_SUBSYS_NFTABLES: u16 = 10;

/// `enum nf_tables_msg_types`.
pub(crate) mod msg {
    pub(crate) const NEWTABLE: u8 = 0;
    pub(crate) const DELTABLE: u8 = 2;
    pub(crate) const NEWCHAIN: u8 = 3;
    pub(crate) const DELCHAIN: u8 = 5;
    pub(crate) const NEWRULE: u8 = 6;
    pub(crate) const DELRULE: u8 = 8;
    pub(crate) const NEWSET: u8 = 9;
    pub(crate) const DELSET: u8 = 11;
    pub(crate) const NEWSETELEM: u8 = 12;
    pub(crate) const DELSETELEM: u8 = 14;
    pub(crate) const DESTROYTABLE: u8 = 26;
    pub(crate) const DESTROYSETELEM: u8 = 30;
    pub(crate) const GETTABLE: u8 = 1;
    pub(crate) const GETRULE: u8 = 7;
    pub(crate) const GETSETELEM: u8 = 13;
    pub(crate) const NEWGEN: u8 = 15;
    pub(crate) const GETGEN: u8 = 16;
}

/// Attribute numbers, one module per `enum nft_*_attributes`.
pub(crate) mod attr {
    pub(crate) const TABLE_NAME: u16 = 1;
    pub(crate) const TABLE_HANDLE: u16 = 4;
    pub(crate) const GEN_ID: u16 = 1;

    pub(crate) const CHAIN_TABLE: u16 = 1;
    pub(crate) const CHAIN_NAME: u16 = 3;
    pub(crate) const CHAIN_HOOK: u16 = 4;
    pub(crate) const CHAIN_POLICY: u16 = 5;
    pub(crate) const CHAIN_TYPE: u16 = 7;
    pub(crate) const HOOK_HOOKNUM: u16 = 1;
    pub(crate) const HOOK_PRIORITY: u16 = 2;

    pub(crate) const RULE_TABLE: u16 = 1;
    pub(crate) const RULE_CHAIN: u16 = 2;
    pub(crate) const RULE_HANDLE: u16 = 3;
    pub(crate) const RULE_EXPRESSIONS: u16 = 4;
    pub(crate) const RULE_USERDATA: u16 = 7;

    pub(crate) const LIST_ELEM: u16 = 1;
    pub(crate) const EXPR_NAME: u16 = 1;
    pub(crate) const EXPR_DATA: u16 = 2;

    pub(crate) const SET_TABLE: u16 = 1;
    pub(crate) const SET_NAME: u16 = 2;
    pub(crate) const SET_FLAGS: u16 = 3;
    pub(crate) const SET_KEY_TYPE: u16 = 4;
    pub(crate) const SET_KEY_LEN: u16 = 5;
    pub(crate) const SET_DATA_TYPE: u16 = 6;
    pub(crate) const SET_DATA_LEN: u16 = 7;
    pub(crate) const SET_DESC: u16 = 9;
    pub(crate) const SET_ID: u16 = 10;
    pub(crate) const SET_TIMEOUT: u16 = 11;
    pub(crate) const SET_USERDATA: u16 = 13;
    pub(crate) const SET_DESC_CONCAT: u16 = 2;
    pub(crate) const SET_FIELD_LEN: u16 = 1;

    pub(crate) const SET_ELEM_KEY: u16 = 1;
    pub(crate) const SET_ELEM_DATA: u16 = 2;
    pub(crate) const SET_ELEM_FLAGS: u16 = 3;
    pub(crate) const SET_ELEM_TIMEOUT: u16 = 4;
    pub(crate) const SET_ELEM_EXPIRATION: u16 = 5;
    pub(crate) const SET_ELEM_USERDATA: u16 = 6;
    pub(crate) const SET_ELEM_KEY_END: u16 = 10;
    pub(crate) const SET_ELEM_LIST_TABLE: u16 = 1;
    pub(crate) const SET_ELEM_LIST_SET: u16 = 2;
    pub(crate) const SET_ELEM_LIST_ELEMENTS: u16 = 3;
    pub(crate) const SET_ELEM_LIST_SET_ID: u16 = 4;

    pub(crate) const DATA_VALUE: u16 = 1;
    pub(crate) const DATA_VERDICT: u16 = 2;
    pub(crate) const VERDICT_CODE: u16 = 1;
    pub(crate) const VERDICT_CHAIN: u16 = 2;
}

/// Rounds up to the 4-byte netlink alignment.
pub(crate) const fn align(len: usize) -> usize {
    (len + 3) & !3
}

/// Appends netlink messages and attributes to a byte buffer.
///
/// Nesting is by position: `nest_start` returns where the attribute header is and
/// `nest_end` patches its length once the children are written. A nested attribute
/// longer than 65,535 bytes cannot be expressed (the length is a u16); `nest_end`
/// records that in `overflow` so the batch can refuse itself instead of sending garbage.
#[derive(Debug, Default, Clone)]
pub(crate) struct Writer {
    pub(crate) buf: Vec<u8>,
    pub(crate) overflow: bool,
}

impl Writer {
    /// Starts a message: nlmsghdr (length patched by `end_msg`, sequence number patched
    /// when the batch is sent) and nfgenmsg. Returns the message's start offset.
    pub(crate) fn begin_msg(&mut self, ty: u16, flags: u16, family: u8, res_id: u16) -> usize {
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_len
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_seq
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid
        self.buf.push(family);
        self.buf.push(0); // NFNETLINK_V0
        self.buf.extend_from_slice(&res_id.to_be_bytes());
        start
    }

    pub(crate) fn end_msg(&mut self, start: usize) {
        let len = (self.buf.len() - start) as u32;
        self.buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
    }

    pub(crate) fn put(&mut self, ty: u16, data: &[u8]) {
        let len = NLA_HDRLEN + data.len();
        if len > usize::from(u16::MAX) {
            self.overflow = true;
        }
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.pad();
    }

    pub(crate) fn put_u32(&mut self, ty: u16, value: u32) {
        self.put(ty, &value.to_be_bytes());
    }

    pub(crate) fn put_u64(&mut self, ty: u16, value: u64) {
        self.put(ty, &value.to_be_bytes());
    }

    /// A NUL-terminated string, as the kernel's NLA_STRING policies expect from nft.
    pub(crate) fn put_str(&mut self, ty: u16, value: &str) {
        let mut data = Vec::with_capacity(value.len() + 1);
        data.extend_from_slice(value.as_bytes());
        data.push(0);
        self.put(ty, &data);
    }

    pub(crate) fn nest_start(&mut self, ty: u16) -> usize {
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        start
    }

    pub(crate) fn nest_end(&mut self, start: usize) {
        let len = self.buf.len() - start;
        if len > usize::from(u16::MAX) {
            self.overflow = true;
        }
        self.buf[start..start + 2].copy_from_slice(&(len as u16).to_ne_bytes());
    }

    fn pad(&mut self) {
        let padded = align(self.buf.len());
        self.buf.resize(padded, 0);
    }
}

/// One netlink message as received: type, flags and payload.
#[derive(Debug)]
pub(crate) struct Received<'a> {
    pub(crate) ty: u16,
    pub(crate) flags: u16,
    pub(crate) payload: &'a [u8],
}

/// Splits a datagram into its netlink messages; stops at the first malformed header.
pub(crate) fn messages(mut data: &[u8]) -> impl Iterator<Item = Received<'_>> {
    std::iter::from_fn(move || {
        if data.len() < NLMSG_HDRLEN {
            return None;
        }
        let len = u32::from_ne_bytes(data[0..4].try_into().ok()?) as usize;
        if len < NLMSG_HDRLEN || len > data.len() {
            return None;
        }
        let msg = Received {
            ty: u16::from_ne_bytes(data[4..6].try_into().ok()?),
            flags: u16::from_ne_bytes(data[6..8].try_into().ok()?),
            payload: &data[NLMSG_HDRLEN..len],
        };
        data = &data[align(len).min(data.len())..];
        Some(msg)
    })
}

/// The attributes of a message's payload after its 4-byte nfgenmsg header, as
/// (type without flag bits, value).
pub(crate) fn attributes(payload: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    nested(payload.get(4..).unwrap_or_default())
}

/// The attributes inside a nested attribute's value.
pub(crate) fn nested(mut data: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if data.len() < NLA_HDRLEN {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([data[0], data[1]]));
        let ty = u16::from_ne_bytes([data[2], data[3]]) & 0x3fff;
        if len < NLA_HDRLEN || len > data.len() {
            return None;
        }
        let value = &data[NLA_HDRLEN..len];
        data = &data[align(len).min(data.len())..];
        Some((ty, value))
    })
}

/// What an NLMSG_ERROR says: the errno (0 for an acknowledgement), the sequence number
/// of the request it answers, and the kernel's extended-ack text if any.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Ack {
    pub(crate) errno: i32,
    pub(crate) seq: u32,
    pub(crate) text: Option<String>,
}

pub(crate) fn parse_ack(msg: &Received<'_>) -> Option<Ack> {
    let p = msg.payload;
    if p.len() < 4 + NLMSG_HDRLEN {
        return None;
    }
    let error = i32::from_ne_bytes(p[0..4].try_into().ok()?);
    let orig_len = u32::from_ne_bytes(p[4..8].try_into().ok()?) as usize;
    let seq = u32::from_ne_bytes(p[12..16].try_into().ok()?);
    let mut text = None;
    if msg.flags & NLM_F_ACK_TLVS != 0 {
        let echoed = if msg.flags & NLM_F_CAPPED != 0 {
            NLMSG_HDRLEN
        } else {
            align(orig_len)
        };
        let mut tlvs = p.get(4 + echoed..).unwrap_or_default();
        while tlvs.len() >= NLA_HDRLEN {
            let len = usize::from(u16::from_ne_bytes([tlvs[0], tlvs[1]]));
            let ty = u16::from_ne_bytes([tlvs[2], tlvs[3]]) & 0x3fff;
            if len < NLA_HDRLEN || len > tlvs.len() {
                break;
            }
            if ty == NLMSGERR_ATTR_MSG {
                let raw = &tlvs[NLA_HDRLEN..len];
                let raw = raw.split(|b| *b == 0).next().unwrap_or_default();
                text = Some(String::from_utf8_lossy(raw).into_owned());
            }
            tlvs = &tlvs[align(len).min(tlvs.len())..];
        }
    }
    Some(Ack {
        errno: -error,
        seq,
        text,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_padded_and_nested_lengths_patched() {
        let mut w = Writer::default();
        let msg = w.begin_msg(0x0a00, NLM_F_REQUEST, 2, 0);
        let nest = w.nest_start(4);
        w.put_str(1, "abc"); // 4 + 4 bytes, no padding
        w.put(2, &[1]); // 4 + 1 + 3 padding
        w.nest_end(nest);
        w.end_msg(msg);
        assert_eq!(w.buf.len(), 16 + 4 + 4 + 8 + 8);
        assert_eq!(u32::from_ne_bytes(w.buf[0..4].try_into().unwrap()), 40);
        assert_eq!(u16::from_ne_bytes([w.buf[20], w.buf[21]]), 20);
        assert_eq!(u16::from_ne_bytes([w.buf[22], w.buf[23]]), 4 | 0x8000);
        assert_eq!(&w.buf[28..32], b"abc\0");
        assert_eq!(u16::from_ne_bytes([w.buf[32], w.buf[33]]), 5);
        assert!(!w.overflow);
    }

    #[test]
    fn oversized_attribute_is_flagged() {
        let mut w = Writer::default();
        w.put(1, &vec![0; 70_000]);
        assert!(w.overflow);
    }

    #[test]
    fn ack_with_extended_message_is_parsed() {
        let mut p = Vec::new();
        p.extend_from_slice(&(-2i32).to_ne_bytes());
        p.extend_from_slice(&16u32.to_ne_bytes()); // echoed header (capped)
        p.extend_from_slice(&[0; 4]);
        p.extend_from_slice(&7u32.to_ne_bytes()); // seq
        p.extend_from_slice(&[0; 4]);
        p.extend_from_slice(&9u16.to_ne_bytes());
        p.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
        p.extend_from_slice(b"oops\0\0\0\0");
        let msg = Received {
            ty: NLMSG_ERROR,
            flags: NLM_F_CAPPED | NLM_F_ACK_TLVS,
            payload: &p,
        };
        assert_eq!(
            parse_ack(&msg),
            Some(Ack {
                errno: 2,
                seq: 7,
                text: Some("oops".into())
            })
        );
    }
}
