//! Evaluation tests: one per rule of the semantics in the module doc.
use super::{
    testutil::{PEER, config, ip, workload},
    *,
};

fn policies(authz_yaml: &str) -> Policies {
    Policies::new(&config(vec![], authz_yaml, "[]"))
}

/// An mTLS connection from `principal` (namespace taken from it) to port 8080.
fn mtls<'a>(dest: &'a Workload, principal: &'a str) -> Connection<'a> {
    Connection {
        destination: dest,
        destination_port: 8080,
        source_ip: ip("10.1.0.5"),
        source_principal: Some(principal),
        source_namespace: principal
            .split("/ns/")
            .nth(1)
            .and_then(|r| r.split('/').next()),
    }
}

fn plaintext(dest: &Workload) -> Connection<'_> {
    Connection {
        source_principal: None,
        source_namespace: None,
        ..mtls(dest, PEER)
    }
}

fn denied(reason: DenyReason, policy: &str) -> Decision {
    Decision::Deny {
        reason,
        policy: policy.into(),
    }
}

fn back() -> Workload {
    workload("back", "api", &[("app", "api"), ("tier", "2")])
}

/// An ALLOW in `back` whose one rule has the given `from[0].source`.
fn allow_from(source: &str) -> Policies {
    policies(&format!(
        "[{{name: a, namespace: back, rules: [{{from: [{{source: {source}}}]}}]}}]"
    ))
}

#[test]
fn deny_reason_labels() {
    assert_eq!(DenyReason::DenyPolicy.as_str(), "deny_policy");
    assert_eq!(DenyReason::NoAllowMatch.as_str(), "no_allow_match");
}

#[test]
fn no_policies_allow() {
    let dest = back();
    assert_eq!(policies("[]").check(&mtls(&dest, PEER)), Decision::Allow);
    assert_eq!(policies("[]").check(&plaintext(&dest)), Decision::Allow);
}

#[test]
fn policies_of_another_namespace_do_not_apply() {
    let p = policies("[{name: a, namespace: other, action: DENY, rules: [{}]}]");
    assert_eq!(p.check(&mtls(&back(), PEER)), Decision::Allow);
}

#[test]
fn selector_needs_every_label() {
    let yaml = |labels: &str| {
        format!(
            "[{{name: d, namespace: back, selector: {{matchLabels: {labels}}}, action: DENY, rules: [{{}}]}}]"
        )
    };
    let dest = back();
    let deny = denied(DenyReason::DenyPolicy, "back/d");
    // A subset of the workload's labels selects it.
    assert_eq!(
        policies(&yaml("{app: api}")).check(&mtls(&dest, PEER)),
        deny
    );
    assert_eq!(
        policies(&yaml("{app: api, tier: '2'}")).check(&mtls(&dest, PEER)),
        deny
    );
    // One pair missing or different: not selected.
    let unselected = ["{app: api, zone: x}", "{app: web}", "{tier: '3'}"];
    for labels in unselected {
        assert_eq!(
            policies(&yaml(labels)).check(&mtls(&dest, PEER)),
            Decision::Allow,
            "{labels}"
        );
    }
    // No matchLabels: the whole namespace.
    assert_eq!(policies(&yaml("{}")).check(&mtls(&dest, PEER)), deny);
}

#[test]
fn allow_that_matches_nothing_denies_and_names_the_policies() {
    let p = policies(
        "[{name: b, namespace: back, rules: [{from: [{source: {principals: [x]}}]}]},
          {name: a, namespace: back, rules: [{to: [{operation: {ports: ['9']}}]}]},
          {name: c, namespace: back, selector: {matchLabels: {app: other}}, rules: [{}]}]",
    );
    let dest = back();
    // `c` selects another workload: not listed. Name order, not list order.
    let deny = denied(DenyReason::NoAllowMatch, "back/a,back/b");
    assert_eq!(p.check(&mtls(&dest, PEER)), deny);
    assert_eq!(
        p.check(&Connection {
            destination_port: 9,
            ..mtls(&dest, PEER)
        }),
        Decision::Allow
    );
}

#[test]
fn allow_that_does_not_select_the_workload_leaves_it_open() {
    let p = policies("[{name: a, namespace: back, selector: {matchLabels: {app: x}}, rules: []}]");
    assert_eq!(p.check(&mtls(&back(), PEER)), Decision::Allow);
}

#[test]
fn allow_without_rules_allows_nothing() {
    let p = policies("[{name: a, namespace: back}]");
    let dest = back();
    assert_eq!(
        p.check(&mtls(&dest, PEER)),
        denied(DenyReason::NoAllowMatch, "back/a")
    );
    assert_eq!(
        p.check(&plaintext(&dest)),
        denied(DenyReason::NoAllowMatch, "back/a")
    );
}

#[test]
fn deny_without_rules_denies_nothing() {
    let p = policies("[{name: d, namespace: back, action: DENY}]");
    assert_eq!(p.check(&mtls(&back(), PEER)), Decision::Allow);
}

#[test]
fn empty_rule_matches_everything() {
    let p = policies("[{name: a, namespace: back, rules: [{}]}]");
    let dest = back();
    assert_eq!(p.check(&mtls(&dest, PEER)), Decision::Allow);
    assert_eq!(p.check(&plaintext(&dest)), Decision::Allow);
}

#[test]
fn deny_wins_over_a_matching_allow() {
    let p = policies(
        "[{name: a, namespace: back, rules: [{}]},
          {name: z, namespace: back, action: DENY, rules: [{to: [{operation: {ports: ['8080']}}]}]},
          {name: y, namespace: back, action: DENY, rules: [{from: [{source: {principals: ['*']}}]}]}]",
    );
    let dest = back();
    // Both DENYs match: the first by name is reported.
    assert_eq!(
        p.check(&mtls(&dest, PEER)),
        denied(DenyReason::DenyPolicy, "back/y")
    );
    assert_eq!(
        p.check(&plaintext(&dest)),
        denied(DenyReason::DenyPolicy, "back/z")
    );
    let other_port = Connection {
        destination_port: 80,
        ..plaintext(&dest)
    };
    assert_eq!(p.check(&other_port), Decision::Allow);
}

#[test]
fn principal_patterns() {
    let dest = back();
    let cases = [
        ("[cluster.local/ns/front/sa/web]", true),
        ("[cluster.local/ns/front/sa/api]", false),
        ("['*']", true),
        ("['cluster.local/ns/front/*']", true),
        ("['cluster.local/ns/back/*']", false),
        ("['*/sa/web']", true),
        ("['*/sa/db']", false),
        ("[x, '*/sa/web']", true),
    ];
    for (principals, allowed) in cases {
        let p = allow_from(&format!("{{principals: {principals}}}"));
        assert_eq!(
            p.check(&mtls(&dest, PEER)).is_allow(),
            allowed,
            "{principals}"
        );
    }
}

#[test]
fn spiffe_scheme_on_the_peer_principal_is_ignored() {
    let p = allow_from("{principals: [cluster.local/ns/front/sa/web]}");
    let dest = back();
    let conn = mtls(&dest, "spiffe://cluster.local/ns/front/sa/web");
    assert_eq!(p.check(&conn), Decision::Allow);
}

#[test]
fn not_principals() {
    let dest = back();
    let p = allow_from("{notPrincipals: ['*/sa/web']}");
    assert!(!p.check(&mtls(&dest, PEER)).is_allow());
    assert!(
        p.check(&mtls(&dest, "cluster.local/ns/front/sa/other"))
            .is_allow()
    );
}

#[test]
fn namespaces_and_not_namespaces() {
    let dest = back();
    let other = "cluster.local/ns/batch/sa/job";
    let p = allow_from("{namespaces: [front, 'ops-*']}");
    assert!(p.check(&mtls(&dest, PEER)).is_allow());
    assert!(p.check(&mtls(&dest, "td/ns/ops-1/sa/x")).is_allow());
    assert!(!p.check(&mtls(&dest, other)).is_allow());
    let p = allow_from("{notNamespaces: [front]}");
    assert!(!p.check(&mtls(&dest, PEER)).is_allow());
    assert!(p.check(&mtls(&dest, other)).is_allow());
}

#[test]
fn plaintext_never_matches_principals_or_namespaces() {
    let dest = back();
    for source in [
        "{principals: ['*']}",
        "{namespaces: ['*']}",
        "{principals: ['']}",
    ] {
        assert!(
            !allow_from(source).check(&plaintext(&dest)).is_allow(),
            "{source}"
        );
    }
}

#[test]
fn plaintext_always_matches_not_principals_and_not_namespaces() {
    let dest = back();
    for source in [
        "{notPrincipals: ['*']}",
        "{notNamespaces: ['*']}",
        "{notPrincipals: [x]}",
    ] {
        assert!(
            allow_from(source).check(&plaintext(&dest)).is_allow(),
            "{source}"
        );
    }
    // The usual "deny plaintext" policy.
    let p = policies(
        "[{name: d, namespace: back, action: DENY, rules: [{from: [{source: {notPrincipals: ['*']}}]}]}]",
    );
    assert_eq!(
        p.check(&plaintext(&dest)),
        denied(DenyReason::DenyPolicy, "back/d")
    );
    assert_eq!(p.check(&mtls(&dest, PEER)), Decision::Allow);
}

#[test]
fn ip_blocks_and_not_ip_blocks() {
    let dest = back();
    let from = |addr: &str| Connection {
        source_ip: ip(addr),
        ..plaintext(&dest)
    };
    let p = allow_from("{ipBlocks: [10.1.0.0/16, 'fd00::/8']}");
    assert!(p.check(&from("10.1.2.3")).is_allow());
    assert!(p.check(&from("fd00::1")).is_allow());
    assert!(!p.check(&from("10.2.0.1")).is_allow());
    // IPv4 seen through a dual-stack socket.
    assert!(p.check(&from("::ffff:10.1.2.3")).is_allow());
    let p = allow_from("{notIpBlocks: [10.1.0.0/16]}");
    assert!(!p.check(&from("10.1.2.3")).is_allow());
    assert!(p.check(&from("10.2.0.1")).is_allow());
}

#[test]
fn every_present_source_field_must_match() {
    let dest = back();
    let p = allow_from("{principals: ['*'], ipBlocks: [10.1.0.0/16]}");
    assert!(p.check(&mtls(&dest, PEER)).is_allow());
    let elsewhere = Connection {
        source_ip: ip("10.9.0.1"),
        ..mtls(&dest, PEER)
    };
    assert!(!p.check(&elsewhere).is_allow());
    assert!(!p.check(&plaintext(&dest)).is_allow());
}

#[test]
fn empty_lists_count_as_absent() {
    let dest = back();
    assert!(
        allow_from("{principals: []}")
            .check(&plaintext(&dest))
            .is_allow()
    );
    let p = policies(
        "[{name: d, namespace: back, action: DENY, rules: [{from: [{source: {principals: []}}], to: [{operation: {ports: []}}]}]}]",
    );
    assert!(!p.check(&plaintext(&dest)).is_allow());
}

#[test]
fn ports_and_not_ports() {
    let dest = back();
    let to = |port| Connection {
        destination_port: port,
        ..mtls(&dest, PEER)
    };
    let p = policies(
        "[{name: a, namespace: back, rules: [{to: [{operation: {ports: ['80', '443']}}]}]}]",
    );
    assert!(p.check(&to(80)).is_allow());
    assert!(p.check(&to(443)).is_allow());
    assert!(!p.check(&to(8080)).is_allow());
    let p =
        policies("[{name: a, namespace: back, rules: [{to: [{operation: {notPorts: ['80']}}]}]}]");
    assert!(!p.check(&to(80)).is_allow());
    assert!(p.check(&to(81)).is_allow());
}

#[test]
fn rule_needs_some_from_and_some_to() {
    let dest = back();
    let p = policies(
        "[{name: a, namespace: back, rules: [{
            from: [{source: {principals: [x]}}, {source: {namespaces: [front]}}],
            to: [{operation: {ports: ['1']}}, {operation: {ports: ['8080']}}]}]}]",
    );
    // The second `from` and the second `to` match.
    assert!(p.check(&mtls(&dest, PEER)).is_allow());
    // `from` matches, no `to` does.
    assert!(
        !p.check(&Connection {
            destination_port: 2,
            ..mtls(&dest, PEER)
        })
        .is_allow()
    );
    // `to` matches, no `from` does.
    assert!(!p.check(&plaintext(&dest)).is_allow());
}

#[test]
fn any_rule_matches_the_policy() {
    let p = policies(
        "[{name: a, namespace: back, rules: [
            {from: [{source: {principals: [x]}}]},
            {to: [{operation: {ports: ['8080']}}]}]}]",
    );
    assert!(p.check(&plaintext(&back())).is_allow());
}

mod peer_authentication {
    use super::*;

    fn mode(peer_yaml: &str, dest: &Workload) -> MtlsMode {
        Policies::new(&config(vec![], "[]", peer_yaml)).mtls_mode(dest)
    }

    #[test]
    fn permissive_without_policy() {
        assert_eq!(mode("[]", &back()), MtlsMode::Permissive);
        let other = "[{name: s, namespace: other, mtls: {mode: STRICT}}]";
        assert_eq!(mode(other, &back()), MtlsMode::Permissive);
    }

    #[test]
    fn namespace_wide_applies_to_all() {
        let yaml = "[{name: s, namespace: back, mtls: {mode: STRICT}}]";
        assert_eq!(mode(yaml, &back()), MtlsMode::Strict);
        // An empty selector is namespace-wide.
        let yaml =
            "[{name: s, namespace: back, selector: {matchLabels: {}}, mtls: {mode: STRICT}}]";
        assert_eq!(mode(yaml, &back()), MtlsMode::Strict);
    }

    #[test]
    fn workload_selector_beats_namespace_wide() {
        let yaml = "[{name: a, namespace: back, mtls: {mode: STRICT}},
                     {name: b, namespace: back, selector: {matchLabels: {app: api}}, mtls: {mode: PERMISSIVE}}]";
        assert_eq!(mode(yaml, &back()), MtlsMode::Permissive);
        let yaml = "[{name: a, namespace: back, mtls: {mode: PERMISSIVE}},
                     {name: b, namespace: back, selector: {matchLabels: {app: api}}, mtls: {mode: STRICT}}]";
        assert_eq!(mode(yaml, &back()), MtlsMode::Strict);
    }

    #[test]
    fn selector_that_does_not_select_falls_back() {
        let yaml = "[{name: a, namespace: back, mtls: {mode: STRICT}},
                     {name: b, namespace: back, selector: {matchLabels: {app: x}}, mtls: {mode: PERMISSIVE}}]";
        assert_eq!(mode(yaml, &back()), MtlsMode::Strict);
        let yaml =
            "[{name: b, namespace: back, selector: {matchLabels: {app: x}}, mtls: {mode: STRICT}}]";
        assert_eq!(mode(yaml, &back()), MtlsMode::Permissive);
    }

    #[test]
    fn ties_go_to_the_first_name() {
        let wide = "[{name: z, namespace: back, mtls: {mode: PERMISSIVE}},
                     {name: m, namespace: back, mtls: {mode: STRICT}}]";
        assert_eq!(mode(wide, &back()), MtlsMode::Strict);
        let selected = "[{name: z, namespace: back, selector: {matchLabels: {app: api}}, mtls: {mode: STRICT}},
                         {name: m, namespace: back, selector: {matchLabels: {tier: '2'}}, mtls: {mode: PERMISSIVE}}]";
        assert_eq!(mode(selected, &back()), MtlsMode::Permissive);
    }
}
