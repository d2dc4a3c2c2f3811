//! Renders a compiled query's parameters as SQL literals, for the benchmark
//! only: `COPY (query) TO STDOUT` cannot take bind parameters, and the
//! yardstick must run the very same SQL. Production code never does this.

use crate::segment::lower::{Compiled, Param};

fn text(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn array<T>(items: &[T], f: impl Fn(&T) -> String, ty: &str) -> String {
    format!(
        "ARRAY[{}]::{ty}[]",
        items.iter().map(f).collect::<Vec<_>>().join(", ")
    )
}

/// The literal for one parameter.
pub fn literal(p: &Param) -> String {
    match p {
        Param::Int8(v) => format!("{v}::bigint"),
        Param::Float8(v) => format!("'{v}'::float8"),
        Param::Text(v) => format!("{}::text", text(v)),
        Param::Bool(v) => format!("{v}"),
        Param::Date(v) => format!("'{v}'::date"),
        Param::Time(v) => format!("'{}'::timestamptz", v.to_rfc3339()),
        Param::Int8Array(v) => array(v, ToString::to_string, "bigint"),
        Param::Int4Array(v) => array(v, ToString::to_string, "int"),
        Param::Float8Array(v) => array(v, |x| format!("'{x}'"), "float8"),
        Param::TextArray(v) => array(v, |x| text(x), "text"),
        Param::DateArray(v) => array(v, |x| format!("'{x}'"), "date"),
        Param::JsonArray(v) => array(v, |x| text(&x.to_string()), "jsonb"),
    }
}

/// `sql` with `$n` placeholders of `c`'s parameters replaced by literals,
/// highest number first so `$1` never clobbers `$10`.
pub fn inline(sql: &str, c: &Compiled) -> String {
    let mut out = sql.to_string();
    for (i, p) in c.params.iter().enumerate().rev() {
        out = out.replace(&format!("${}", i + 1), &literal(p));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_literals() {
        let c = Compiled::new(
            String::new(),
            (1..=10)
                .map(|i| {
                    if i == 10 {
                        Param::Text("o'k".into())
                    } else {
                        Param::Int8(i)
                    }
                })
                .collect(),
        );
        assert_eq!(inline("$1 $10 $2", &c), "1::bigint 'o''k'::text 2::bigint");
    }
}
