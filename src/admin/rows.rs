//! Result sets as PgBouncer's console writes them (src/pktbuf.c,
//! `pktbuf_write_RowDescription`): every value in text format, column types
//! text, int4, int8 or numeric, timestamps as text in UTC. Exporters parse
//! the column names; some drivers look at the types, so both match.

use std::time::SystemTime;

use crate::error::PgError;
use crate::protocol::{build, tag};

/// A column type, as PgBouncer's tuple descriptor letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ty {
    /// `s`: text.
    Text,
    /// `i`: int4.
    Int4,
    /// `q`: int8.
    Int8,
    /// `N`: numeric (the stats counters).
    Numeric,
    /// `T`: a time, sent as text.
    Time,
}

impl Ty {
    /// (type oid, type size) in RowDescription.
    fn oid_size(self) -> (u32, i16) {
        match self {
            Ty::Text | Ty::Time => (25, -1),
            Ty::Int4 => (23, 4),
            Ty::Int8 => (20, 8),
            Ty::Numeric => (1700, -1),
        }
    }
}

/// A result set being written into `out`.
pub struct ResultSet<'a> {
    out: &'a mut Vec<u8>,
    width: usize,
}

impl<'a> ResultSet<'a> {
    /// Writes the RowDescription.
    pub fn new(out: &'a mut Vec<u8>, columns: &[(&str, Ty)]) -> Self {
        let start = out.len();
        out.push(tag::ROW_DESCRIPTION);
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&(columns.len() as i16).to_be_bytes());
        for (name, ty) in columns {
            let (oid, size) = ty.oid_size();
            out.extend_from_slice(name.as_bytes());
            out.push(0);
            out.extend_from_slice(&0u32.to_be_bytes()); // table oid
            out.extend_from_slice(&0i16.to_be_bytes()); // column number
            out.extend_from_slice(&oid.to_be_bytes());
            out.extend_from_slice(&size.to_be_bytes());
            out.extend_from_slice(&(-1i32).to_be_bytes()); // type modifier
            out.extend_from_slice(&0i16.to_be_bytes()); // text format
        }
        let len = (out.len() - start - 1) as u32;
        out[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
        ResultSet {
            out,
            width: columns.len(),
        }
    }

    /// Writes one DataRow; `None` is NULL. A row of the wrong width is a
    /// bug in the caller and is padded or cut rather than sent malformed.
    pub fn row(&mut self, values: &[Option<String>]) {
        let mut cells: Vec<Option<&str>> = values.iter().map(|v| v.as_deref()).collect();
        debug_assert_eq!(cells.len(), self.width, "row width");
        cells.resize(self.width, None);
        build::data_row(self.out, &cells);
    }

    /// Writes CommandComplete `SHOW`.
    pub fn finish(self) {
        build::command_complete(self.out, "SHOW");
    }
}

/// A non-NULL cell.
pub fn v(x: impl ToString) -> Option<String> {
    Some(x.to_string())
}

/// A time cell as PgBouncer prints it (`2024-05-01 12:00:00 UTC`).
pub fn time(t: Option<SystemTime>) -> Option<String> {
    let secs = t?.duration_since(SystemTime::UNIX_EPOCH).ok()?.as_secs();
    Some(format_utc(secs))
}

/// `YYYY-MM-DD HH:MM:SS UTC` for a Unix time (civil-from-days, proleptic
/// Gregorian), so the console needs no date crate.
pub fn format_utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// A console ERROR in PgBouncer's style (SQLSTATE 08P01 unless given).
pub fn error(out: &mut Vec<u8>, message: impl Into<String>) {
    PgError::error(super::CONSOLE_SQLSTATE, message).encode(out);
}

/// A NoticeResponse with a message and optional detail (SHOW HELP, SET
/// ignored).
pub fn notice(out: &mut Vec<u8>, message: &str, detail: Option<&str>) {
    let start = out.len();
    out.push(b'N');
    out.extend_from_slice(&[0; 4]);
    let mut field = |code: u8, text: &str| {
        out.push(code);
        out.extend_from_slice(text.as_bytes());
        out.push(0);
    };
    field(b'S', "NOTICE");
    field(b'V', "NOTICE");
    field(b'C', "00000");
    field(b'M', message);
    if let Some(d) = detail {
        field(b'D', d);
    }
    out.push(0);
    let len = (out.len() - start - 1) as u32;
    out[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(format_utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(format_utc(1_714_564_800), "2024-05-01 12:00:00 UTC");
    }

    #[test]
    fn row_description_carries_types() {
        let mut out = Vec::new();
        let rs = ResultSet::new(&mut out, &[("a", Ty::Text), ("b", Ty::Int4)]);
        rs.finish();
        assert_eq!(out[0], b'T');
        let len = u32::from_be_bytes([out[1], out[2], out[3], out[4]]) as usize;
        // "a\0" + 18 bytes, "b\0" + 18 bytes, 2 bytes count, 4 bytes length.
        assert_eq!(len, 4 + 2 + 2 * (2 + 18));
        // int4 oid of column b.
        let b = 5 + 2 + 20 + 2 + 6;
        assert_eq!(&out[b..b + 4], &23u32.to_be_bytes());
    }
}
