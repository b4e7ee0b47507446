//! A kubeconfig that points at the stand-in.

/// One cluster (`server`), one user (a bearer token) and one context named
/// `context`, the current one. Names are written as JSON strings, which YAML
/// reads as they are whatever they contain.
pub fn yaml(context: &str, server: &str, token: &str) -> String {
    let q = |s: &str| serde_json::to_string(s).expect("a string serializes");
    let cluster = q(&format!("{context}-cluster"));
    let user = q(&format!("{context}-user"));
    let context = q(context);
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: {cluster}
  cluster:
    server: {server}
users:
- name: {user}
  user:
    token: {token}
contexts:
- name: {context}
  context:
    cluster: {cluster}
    user: {user}
    namespace: default
current-context: {context}
preferences: {{}}
",
        server = q(server),
        token = q(token),
    )
}
