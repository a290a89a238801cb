//! The edge rules: which service a CLIENT or PRODUCER span calls, read from the caller's side
//! (as JD's Overwatch draws its graph), so a stateless gateway needs no other span of the
//! trace. The Collector's servicegraph connector pairs client and server spans instead, and
//! falls back to the same kind of attributes for a "virtual node" when the server span is
//! missing; Weir always takes the caller's view.

/// Span kinds (OTLP `Span.SpanKind`).
pub(crate) const KIND_CLIENT: i32 = 3;
/// A span that sends a message.
pub(crate) const KIND_PRODUCER: i32 = 4;

/// The attribute keys the rules read, in the order of `Found::values`.
const KEYS: [&[u8]; 8] = [
    b"peer.service",
    b"server.address",
    b"rpc.service",
    b"db.namespace",
    b"db.name",
    b"db.system",
    b"messaging.destination.name",
    b"messaging.system",
];
const PEER_SERVICE: usize = 0;
const SERVER_ADDRESS: usize = 1;
const RPC_SERVICE: usize = 2;
const DB_NAMESPACE: usize = 3;
const DB_NAME: usize = 4;
const DB_SYSTEM: usize = 5;
const MESSAGING_DESTINATION: usize = 6;
const MESSAGING_SYSTEM: usize = 7;

/// What kind of call an edge is: the servicegraph connector's `connection_type` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ConnectionType {
    /// A direct call (the connector writes an empty string).
    Direct = 0,
    /// A database call (`db.system` is set).
    Database = 1,
    /// A message sent (a PRODUCER span, or `messaging.*` attributes).
    Messaging = 2,
}

impl ConnectionType {
    /// The `connection_type` attribute value.
    pub fn label(self) -> &'static str {
        match self {
            Self::Direct => "",
            Self::Database => "database",
            Self::Messaging => "messaging_system",
        }
    }

    /// The type stored as `byte` in a key.
    pub fn from_byte(byte: u8) -> Self {
        match byte {
            1 => Self::Database,
            2 => Self::Messaging,
            _ => Self::Direct,
        }
    }
}

/// Whether a span of `kind` is the caller's side of an edge.
#[inline]
pub(crate) fn is_call(kind: i32) -> bool {
    kind == KIND_CLIENT || kind == KIND_PRODUCER
}

/// Whether `key` is one the edge rules read (for `SpanEntry::scan_attributes`).
#[inline]
pub(crate) fn wanted(key: &[u8]) -> bool {
    // Every key starts with one of these letters: most keys are ruled out by one comparison.
    matches!(key.first(), Some(b'p' | b's' | b'r' | b'd' | b'm')) && KEYS.contains(&key)
}

/// The edge attributes of one span, as its scan found them (the last of a repeated key wins,
/// as everywhere else a span's attributes are read).
#[derive(Default)]
pub(crate) struct Found<'a> {
    values: [Option<&'a [u8]>; KEYS.len()],
}

impl<'a> Found<'a> {
    /// Records an attribute the scan visited; only non-empty string values count.
    #[inline]
    pub(crate) fn visit(&mut self, key: &[u8], value: Option<&'a [u8]>) {
        if let Some(i) = KEYS.iter().position(|k| *k == key)
            && let Some(v) = value.filter(|v| !v.is_empty())
        {
            self.values[i] = Some(v);
        }
    }

    /// The callee and the connection type of a span of `kind`: `peer.service`, else
    /// `server.address`, else `rpc.service`, else the database (`db.namespace`, the older
    /// `db.name`, else `db.system`), else `messaging.destination.name`. `None`: the span
    /// names no callee, and makes no edge.
    pub(crate) fn callee(&self, kind: i32) -> Option<(&'a [u8], ConnectionType)> {
        let v = &self.values;
        let name = v[PEER_SERVICE]
            .or(v[SERVER_ADDRESS])
            .or(v[RPC_SERVICE])
            .or(v[DB_NAMESPACE])
            .or(v[DB_NAME])
            .or(v[DB_SYSTEM])
            .or(v[MESSAGING_DESTINATION])?;
        let connection = if kind == KIND_PRODUCER
            || v[MESSAGING_SYSTEM].is_some()
            || v[MESSAGING_DESTINATION].is_some()
        {
            ConnectionType::Messaging
        } else if v[DB_SYSTEM].is_some() {
            ConnectionType::Database
        } else {
            ConnectionType::Direct
        };
        Some((name, connection))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn callee(kind: i32, attrs: &[(&str, &str)]) -> Option<(String, ConnectionType)> {
        let mut found = Found::default();
        for (k, v) in attrs {
            assert!(wanted(k.as_bytes()), "{k}");
            found.visit(k.as_bytes(), Some(v.as_bytes()));
        }
        found
            .callee(kind)
            .map(|(n, c)| (String::from_utf8(n.to_vec()).unwrap(), c))
    }

    #[test]
    fn the_callee_follows_the_documented_order() {
        use ConnectionType::*;
        let all = [
            ("messaging.destination.name", "orders"),
            ("db.system", "postgresql"),
            ("db.namespace", "shop"),
            ("rpc.service", "Cart"),
            ("server.address", "cart.internal"),
            ("peer.service", "cart"),
        ];
        // Each key in turn, once the ones before it are gone.
        let expected = [
            ("cart", Messaging),
            ("cart.internal", Messaging),
            ("Cart", Messaging),
            ("shop", Messaging),
            ("postgresql", Messaging),
            ("orders", Messaging),
        ];
        for (i, want) in expected.iter().enumerate() {
            let attrs = &all[..all.len() - i];
            assert_eq!(
                callee(KIND_CLIENT, attrs),
                Some((want.0.to_string(), want.1)),
                "{attrs:?}"
            );
        }
        assert_eq!(
            callee(
                KIND_CLIENT,
                &[("server.address", "api"), ("db.system", "redis")]
            ),
            Some(("api".into(), Database))
        );
        assert_eq!(
            callee(
                KIND_CLIENT,
                &[("db.name", "legacy"), ("db.system", "mysql")]
            ),
            Some(("legacy".into(), Database))
        );
        assert_eq!(
            callee(KIND_CLIENT, &[("rpc.service", "Cart")]),
            Some(("Cart".into(), Direct))
        );
        assert_eq!(
            callee(KIND_PRODUCER, &[("peer.service", "kafka")]),
            Some(("kafka".into(), Messaging))
        );
    }

    #[test]
    fn no_callee_no_edge_and_empty_values_do_not_count() {
        assert_eq!(callee(KIND_CLIENT, &[]), None);
        assert_eq!(callee(KIND_CLIENT, &[("peer.service", "")]), None);
        let mut found = Found::default();
        found.visit(b"peer.service", None);
        found.visit(b"http.method", Some(b"GET"));
        assert!(found.callee(KIND_CLIENT).is_none());
        assert!(!wanted(b"http.method"));
        assert!(!wanted(b"peer"));
        assert!(is_call(KIND_CLIENT) && is_call(KIND_PRODUCER));
        assert!(!is_call(2) && !is_call(5) && !is_call(1) && !is_call(0));
    }

    #[test]
    fn the_last_of_a_repeated_key_wins() {
        let mut found = Found::default();
        found.visit(b"peer.service", Some(b"a"));
        found.visit(b"peer.service", Some(b"b"));
        assert_eq!(found.callee(KIND_CLIENT).map(|c| c.0), Some(&b"b"[..]));
    }
}
