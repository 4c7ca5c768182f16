//! `auth_ident_file` (pg_ident.conf format): the maps an hba rule's `map=` names.

use std::path::Path;

use super::hba::parse::{records, Item};
use super::hba::{read, HbaError};

/// `auth_ident_file` (pg_ident.conf format): `MAP SYSTEM-USERNAME DATABASE-USERNAME` lines,
/// which let an hba rule's `map=` admit an OS user (`peer`) or certificate name (`cert`) as a
/// user of another name. Literal names only (PostgreSQL's `/regex` form is refused).
#[derive(Clone, Debug, Default)]
pub struct IdentMap {
    entries: Vec<(String, String, String)>,
}

impl IdentMap {
    /// Reads the file at `path`.
    pub fn load(path: &Path) -> Result<IdentMap, HbaError> {
        IdentMap::parse(&read(path)?)
    }

    /// Parses the file's text; every bad line is reported.
    pub fn parse(text: &str) -> Result<IdentMap, HbaError> {
        let (mut entries, mut problems) = (Vec::new(), Vec::new());
        for (line, fields) in records(text) {
            let words: Vec<&Item> = fields.iter().flatten().collect();
            match words.as_slice() {
                [_, system, _] if system.text.starts_with('/') && !system.quoted => {
                    problems.push(format!(
                        "line {line}: regular expression \"{}\" is not supported",
                        system.text
                    ))
                }
                [map, system, user] if fields.len() == 3 => {
                    entries.push((map.text.clone(), system.text.clone(), user.text.clone()))
                }
                _ => problems.push(format!(
                    "line {line}: expected MAP SYSTEM-USERNAME DATABASE-USERNAME"
                )),
            }
        }
        if problems.is_empty() {
            Ok(IdentMap { entries })
        } else {
            Err(HbaError::Lines(problems))
        }
    }

    /// Whether map `map` lets `system` log in as `user`.
    pub fn allows(&self, map: &str, system: &str, user: &str) -> bool {
        self.entries
            .iter()
            .any(|(m, s, u)| m == map && s == system && u == user)
    }

    /// Whether the file defines map `map`.
    pub fn has(&self, map: &str) -> bool {
        self.entries.iter().any(|(m, _, _)| m == map)
    }
}
