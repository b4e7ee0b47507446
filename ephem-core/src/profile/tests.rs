//! Parsing, inheritance and override resolution of nextest profiles.

use super::*;

fn parse(text: &str, name: Option<&str>) -> Result<Profile> {
    Profile::parse(
        text,
        Utf8Path::new("/ws/.config/nextest.toml"),
        Utf8Path::new("/ws"),
        Utf8Path::new("/ws/target"),
        name,
    )
}
