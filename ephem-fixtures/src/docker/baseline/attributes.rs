//! What a test can observe of its database besides what is in it, and
//! `CREATE DATABASE ... TEMPLATE` does not copy: the owner (a copy belongs
//! to whoever made it), the privileges on the database (`datacl`), its
//! settings for everyone and per role (`ALTER DATABASE ... SET`, `ALTER
//! ROLE ... IN DATABASE ... SET`), its comment and its connection limit.
//!
//! Read once from the database `setup` left, replayed on every copy as
//! statements, the way `pg_dumpall` writes them.

use super::postgres::{ident, literal, pg_message};

/// The database-level state of a baseline.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct Attributes {
    owner: String,
    /// -1: no limit.
    connection_limit: i32,
    comment: Option<String>,
    /// `None`: the default privileges (a null `datacl`), which a copy has.
    grants: Option<Vec<Grant>>,
    settings: Vec<Setting>,
}

/// One privilege of one grantee, as `aclexplode` lists them.
#[derive(Clone, Debug, PartialEq)]
struct Grant {
    grantor: String,
    /// `None`: PUBLIC.
    grantee: Option<String>,
    /// CREATE, TEMPORARY or CONNECT.
    privilege: String,
    grantable: bool,
}

/// One `name=value` of `pg_db_role_setting`.
#[derive(Clone, Debug, PartialEq)]
struct Setting {
    /// `None`: for every role.
    role: Option<String>,
    name: String,
    /// As the server stored it (list settings flattened, quoted).
    value: String,
}

impl Attributes {
    /// The attributes of `database` now.
    pub async fn read(
        client: &tokio_postgres::Client,
        database: &str,
    ) -> Result<Attributes, String> {
        let fail = |e: tokio_postgres::Error| {
            format!(
                "cannot read the owner, privileges and settings of {database}: {}",
                pg_message(&e)
            )
        };
        let row = client
            .query_opt(
                "SELECT oid, pg_get_userbyid(datdba)::text, datconnlimit, \
                        shobj_description(oid, 'pg_database'), datacl IS NULL \
                 FROM pg_database WHERE datname = $1",
                &[&database],
            )
            .await
            .map_err(fail)?
            .ok_or_else(|| format!("database {database} does not exist"))?;
        let oid: u32 = row.get(0);
        let default_privileges: bool = row.get(4);
        let grants = if default_privileges {
            None
        } else {
            Some(grants(client, oid).await.map_err(fail)?)
        };
        Ok(Attributes {
            owner: row.get(1),
            connection_limit: row.get(2),
            comment: row.get(3),
            grants,
            settings: settings(client, oid).await.map_err(fail)?,
        })
    }

    /// Statements that give `database`, a fresh copy, these attributes.
    /// Each ends with `;`: run them as one batch (one transaction).
    pub fn statements(&self, database: &str) -> String {
        let db = ident(database);
        let owner = ident(&self.owner);
        let mut sql = format!("ALTER DATABASE {db} OWNER TO {owner};");
        if self.connection_limit != -1 {
            sql += &format!(
                "ALTER DATABASE {db} CONNECTION LIMIT {};",
                self.connection_limit
            );
        }
        if let Some(comment) = &self.comment {
            sql += &format!("COMMENT ON DATABASE {db} IS {};", literal(comment));
        }
        if let Some(grants) = &self.grants {
            // From the default privileges to none, then each grant in the
            // order the list holds them (a grantor's grant option first).
            sql += &format!(
                "REVOKE ALL ON DATABASE {db} FROM PUBLIC;REVOKE ALL ON DATABASE {db} FROM {owner};"
            );
            for g in grants {
                let grantee = g.grantee.as_deref().map_or("PUBLIC".to_owned(), ident);
                let option = if g.grantable {
                    " WITH GRANT OPTION"
                } else {
                    ""
                };
                let grant = format!(
                    "GRANT {} ON DATABASE {db} TO {grantee}{option};",
                    g.privilege
                );
                if g.grantor == self.owner {
                    // A superuser's grant is recorded as the owner's.
                    sql += &grant;
                } else {
                    sql += &format!("SET ROLE {};{grant}RESET ROLE;", ident(&g.grantor));
                }
            }
        }
        for s in &self.settings {
            let target = match &s.role {
                None => format!("ALTER DATABASE {db}"),
                Some(role) => format!("ALTER ROLE {} IN DATABASE {db}", ident(role)),
            };
            sql += &format!(
                "{target} SET {} TO {};",
                ident(&s.name),
                setting_value(&s.name, &s.value)
            );
        }
        sql
    }
}

/// The privileges on database `oid`, in the order its `datacl` lists them.
async fn grants(
    client: &tokio_postgres::Client,
    oid: u32,
) -> Result<Vec<Grant>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT pg_get_userbyid(a.grantor)::text, \
                    CASE WHEN a.grantee = 0 THEN NULL \
                         ELSE pg_get_userbyid(a.grantee)::text END, \
                    a.privilege_type, a.is_grantable \
             FROM pg_database d, \
                  aclexplode(d.datacl) WITH ORDINALITY \
                    AS a(grantor, grantee, privilege_type, is_grantable, n) \
             WHERE d.oid = $1 ORDER BY a.n",
            &[&oid],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Grant {
            grantor: r.get(0),
            grantee: r.get(1),
            privilege: r.get(2),
            grantable: r.get(3),
        })
        .collect())
}

/// The settings of database `oid`, for everyone first, in stored order.
async fn settings(
    client: &tokio_postgres::Client,
    oid: u32,
) -> Result<Vec<Setting>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT CASE WHEN s.setrole = 0 THEN NULL \
                         ELSE pg_get_userbyid(s.setrole)::text END, c.setting \
             FROM pg_db_role_setting s, \
                  unnest(s.setconfig) WITH ORDINALITY AS c(setting, n) \
             WHERE s.setdatabase = $1 ORDER BY s.setrole, c.n",
            &[&oid],
        )
        .await?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            let setting: String = r.get(1);
            let (name, value) = setting.split_once('=')?;
            Some(Setting {
                role: r.get(0),
                name: name.to_owned(),
                value: value.to_owned(),
            })
        })
        .collect())
}

/// A stored setting's value as `SET name TO ...` takes it. List settings
/// whose elements the server quotes (`search_path`...) were stored
/// flattened: they are split back into one literal per element, as
/// `pg_dump` does, or `"$user", public` would come back as one element.
fn setting_value(name: &str, value: &str) -> String {
    const LIST_QUOTE: [&str; 6] = [
        "local_preload_libraries",
        "search_path",
        "session_preload_libraries",
        "shared_preload_libraries",
        "temp_tablespaces",
        "unix_socket_directories",
    ];
    if !LIST_QUOTE.iter().any(|l| l.eq_ignore_ascii_case(name)) {
        return literal(value);
    }
    match split_guc_list(value) {
        Some(items) if !items.is_empty() => items
            .iter()
            .map(|i| literal(i))
            .collect::<Vec<_>>()
            .join(", "),
        _ => literal(value),
    }
}

/// Splits a flattened list setting (`"$user", public, "a""b"`) into its
/// elements, like `SplitGUCList` in Postgres's `string_utils.c`; `None` on
/// a malformed value.
fn split_guc_list(value: &str) -> Option<Vec<String>> {
    let chars: Vec<char> = value.chars().collect();
    let mut i = 0;
    let skip_space = |i: &mut usize| {
        while *i < chars.len() && chars[*i].is_ascii_whitespace() {
            *i += 1;
        }
    };
    let mut items = Vec::new();
    skip_space(&mut i);
    if i == chars.len() {
        return Some(items);
    }
    loop {
        let mut item = String::new();
        if chars[i] == '"' {
            i += 1;
            loop {
                match chars.get(i) {
                    None => return None,
                    Some('"') if chars.get(i + 1) == Some(&'"') => {
                        item.push('"');
                        i += 2;
                    }
                    Some('"') => {
                        i += 1;
                        break;
                    }
                    Some(c) => {
                        item.push(*c);
                        i += 1;
                    }
                }
            }
        } else {
            while i < chars.len() && chars[i] != ',' && !chars[i].is_ascii_whitespace() {
                item.push(chars[i]);
                i += 1;
            }
            if item.is_empty() {
                return None;
            }
        }
        items.push(item);
        skip_space(&mut i);
        match chars.get(i) {
            None => return Some(items),
            Some(',') => {
                i += 1;
                skip_space(&mut i);
            }
            Some(_) => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_settings_split_into_one_literal_per_element() {
        assert_eq!(
            setting_value("search_path", r#""$user", public, "Odd ""x"" Schema""#),
            r#"'$user', 'public', 'Odd "x" Schema'"#
        );
        assert_eq!(setting_value("Search_Path", r#""""#), "''");
        assert_eq!(setting_value("search_path", "a,b"), "'a', 'b'");
        // Malformed (an unclosed quote): kept whole rather than guessed at.
        assert_eq!(setting_value("search_path", r#""a, b"#), r#"'"a, b'"#);
    }

    #[test]
    fn other_settings_are_one_literal() {
        assert_eq!(setting_value("app.tenant", "seed's"), "'seed''s'");
        assert_eq!(setting_value("app.path", r"C:\x"), r"E'C:\\x'");
        assert_eq!(setting_value("statement_timeout", "5s"), "'5s'");
    }

    #[test]
    fn statements_replay_owner_privileges_and_settings() {
        let attributes = Attributes {
            owner: "app_owner".into(),
            connection_limit: 50,
            comment: Some("the baseline".into()),
            grants: Some(vec![
                Grant {
                    grantor: "app_owner".into(),
                    grantee: Some("reader".into()),
                    privilege: "CONNECT".into(),
                    grantable: true,
                },
                Grant {
                    grantor: "reader".into(),
                    grantee: None,
                    privilege: "CONNECT".into(),
                    grantable: false,
                },
            ]),
            settings: vec![Setting {
                role: Some("reader".into()),
                name: "statement_timeout".into(),
                value: "5s".into(),
            }],
        };
        assert_eq!(
            attributes.statements("ephem_t_1"),
            "ALTER DATABASE \"ephem_t_1\" OWNER TO \"app_owner\";\
             ALTER DATABASE \"ephem_t_1\" CONNECTION LIMIT 50;\
             COMMENT ON DATABASE \"ephem_t_1\" IS 'the baseline';\
             REVOKE ALL ON DATABASE \"ephem_t_1\" FROM PUBLIC;\
             REVOKE ALL ON DATABASE \"ephem_t_1\" FROM \"app_owner\";\
             GRANT CONNECT ON DATABASE \"ephem_t_1\" TO \"reader\" WITH GRANT OPTION;\
             SET ROLE \"reader\";GRANT CONNECT ON DATABASE \"ephem_t_1\" TO PUBLIC;RESET ROLE;\
             ALTER ROLE \"reader\" IN DATABASE \"ephem_t_1\" SET \"statement_timeout\" TO '5s';"
        );
    }
}
