//! Bearer tokens: which configured token a request presents, and its role. Only SHA-256
//! digests are kept; a presented token is hashed and compared against every configured digest
//! in constant time, so neither the comparison's timing nor a log line gives a token away.

use subtle::ConstantTimeEq;
use weir_config::auth::{TokenHash, hash_token};
use weir_config::control_plane::Role;

/// The configured tokens: name, role and digest; and, for gateway tokens, the instance ids
/// each may connect as.
#[derive(Clone)]
pub struct Tokens {
    entries: Vec<(String, Role, TokenHash)>,
    /// Token name -> instance id patterns; a gateway token not listed may be any instance.
    instances: std::collections::BTreeMap<String, Vec<String>>,
}

/// Never shows digests.
impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|(n, r, _)| (n, r.as_str())))
            .finish()
    }
}

/// The holder of a presented token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The token's configured name.
    pub name: String,
    /// Its role.
    pub role: Role,
}

impl Tokens {
    /// Tokens from resolved config entries.
    pub fn new(entries: Vec<(String, Role, TokenHash)>) -> Self {
        Self {
            entries,
            instances: Default::default(),
        }
    }

    /// Binds the token named `name` to instance ids matching `patterns` (`*` = any run of
    /// characters): a gateway holding it may connect only as one of those.
    pub fn bind_instances(&mut self, name: &str, patterns: Vec<String>) {
        self.instances.insert(name.to_string(), patterns);
    }

    /// Whether the holder of the token named `name` may connect as `instance_id`.
    pub fn may_be_instance(&self, name: &str, instance_id: &str) -> bool {
        self.instances.get(name).is_none_or(|patterns| {
            patterns
                .iter()
                .any(|p| crate::identity::matches_pattern(p, instance_id))
        })
    }

    /// The holder of `presented` (the token itself), if it is a configured token.
    pub fn identify(&self, presented: &str) -> Option<Caller> {
        let digest = hash_token(presented.as_bytes());
        // Compare against every entry, not stopping at a match, so timing says nothing
        // about which (or whether) a token matched.
        let mut found = None;
        for (name, role, hash) in &self.entries {
            if bool::from(hash.ct_eq(&digest)) {
                found = Some(Caller {
                    name: name.clone(),
                    role: *role,
                });
            }
        }
        found
    }

    /// The holder of an `authorization` header value of the form `Bearer <token>`.
    pub fn identify_header(&self, header: Option<&str>) -> Option<Caller> {
        let value = header?.trim();
        let (scheme, token) = value.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let token = token.trim();
        if token.is_empty() {
            return None;
        }
        self.identify(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> Tokens {
        Tokens::new(vec![
            ("ops".into(), Role::Admin, hash_token(b"admin-secret")),
            ("dash".into(), Role::Viewer, hash_token(b"viewer-secret")),
            ("gws".into(), Role::Gateway, hash_token(b"gw-secret")),
        ])
    }

    #[test]
    fn identifies_tokens_by_hash() {
        let t = tokens();
        assert_eq!(
            t.identify("admin-secret"),
            Some(Caller {
                name: "ops".into(),
                role: Role::Admin
            })
        );
        assert_eq!(
            t.identify("viewer-secret").map(|c| c.role),
            Some(Role::Viewer)
        );
        assert_eq!(t.identify("gw-secret").map(|c| c.role), Some(Role::Gateway));
        assert_eq!(t.identify("admin-secre"), None);
        assert_eq!(t.identify(""), None);
    }

    #[test]
    fn reads_bearer_headers() {
        let t = tokens();
        assert_eq!(
            t.identify_header(Some("Bearer admin-secret"))
                .map(|c| c.name),
            Some("ops".into())
        );
        assert!(t.identify_header(Some("bearer  viewer-secret ")).is_some());
        assert!(t.identify_header(Some("Basic admin-secret")).is_none());
        assert!(t.identify_header(Some("admin-secret")).is_none());
        assert!(t.identify_header(Some("Bearer ")).is_none());
        assert!(t.identify_header(None).is_none());
    }

    #[test]
    fn bound_tokens_connect_only_as_their_instances() {
        let mut t = tokens();
        assert!(t.may_be_instance("gws", "anything"));
        t.bind_instances("gws", vec!["gw-eu-*".into(), "edge-1".into()]);
        assert!(t.may_be_instance("gws", "gw-eu-3"));
        assert!(t.may_be_instance("gws", "edge-1"));
        assert!(!t.may_be_instance("gws", "gw-us-3"));
        assert!(!t.may_be_instance("gws", "edge-10"));
    }

    #[test]
    fn debug_shows_no_digest() {
        let shown = format!("{:?}", tokens());
        assert!(
            shown.contains("ops") && !shown.contains(&hex::encode(hash_token(b"admin-secret")))
        );
    }
}
