//! The chart: one horizontal bar per target, the measured value divided by the target, so
//! the target is always the line at 1; green where it is met, red where it is missed.
//! Plain SVG text, no plotting library.

use std::fmt::Write as _;

use crate::report::{Bound, Outcome, fmt_num};

const WIDTH: f64 = 760.0;
const LABEL_W: f64 = 300.0;
const ROW: f64 = 30.0;
const TOP: f64 = 50.0;
const BAR_W: f64 = 330.0;

/// `s` as SVG text or attribute content.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// An SVG document charting `outcomes` under `title`.
pub fn chart(title: &str, outcomes: &[Outcome]) -> String {
    let norm = |o: &Outcome| o.value.map(|v| if o.target.target == 0.0 { 0.0 } else { v / o.target.target });
    // Scale to the largest bar but always show the target line well inside the plot.
    let max = outcomes.iter().filter_map(norm).fold(2.0_f64, f64::max).min(6.0);
    let x = |n: f64| LABEL_W + BAR_W * (n.clamp(0.0, max) / max);
    let height = TOP + ROW * outcomes.len() as f64 + 40.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(s, r#"<text x="10" y="20" font-size="15" font-weight="bold">{}</text>"#, escape(title));
    let _ = writeln!(
        s,
        r##"<text x="10" y="38" fill="#555">bar = measured ÷ target (line at 1 = target); green met, red missed</text>"##
    );
    for (i, o) in outcomes.iter().enumerate() {
        let y = TOP + ROW * i as f64;
        let color = if o.pass { "#2e7d32" } else { "#c62828" };
        let op = match o.target.bound {
            Bound::AtLeast => "≥",
            Bound::AtMost => "≤",
        };
        let _ = writeln!(
            s,
            r#"<text x="10" y="{}">{}</text>"#,
            y + 17.0,
            escape(&format!("{} ({op} {})", o.target.label, fmt_num(o.target.target)))
        );
        match norm(o) {
            Some(n) => {
                let _ = writeln!(
                    s,
                    r#"<rect x="{LABEL_W}" y="{}" width="{:.1}" height="20" fill="{color}"/>"#,
                    y + 4.0,
                    x(n) - LABEL_W
                );
                let value = o.value.map(fmt_num).unwrap_or_default();
                let _ = writeln!(
                    s,
                    r#"<text x="{:.1}" y="{}">{} {}</text>"#,
                    x(n) + 6.0,
                    y + 18.0,
                    escape(&value),
                    if o.pass { "pass" } else { "MISS" }
                );
            }
            None => {
                let _ =
                    writeln!(s, r#"<text x="{LABEL_W}" y="{}" fill="{color}">not measured (MISS)</text>"#, y + 18.0);
            }
        }
    }
    let line_x = x(1.0);
    let bottom = TOP + ROW * outcomes.len() as f64;
    let _ = writeln!(
        s,
        r#"<line x1="{line_x:.1}" y1="{}" x2="{line_x:.1}" y2="{}" stroke="black" stroke-dasharray="4 3"/>"#,
        TOP - 4.0,
        bottom + 4.0
    );
    let _ = writeln!(s, r#"<text x="{:.1}" y="{}" text-anchor="middle">target</text>"#, line_x, bottom + 20.0);
    let _ = writeln!(s, "</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Against, Target};

    #[test]
    fn bars_scale_to_the_target_and_show_pass_or_miss() {
        let t = |label, target, bound| Target { metric: "m", against: Against::Ratio, bound, target, label };
        let outcomes = vec![
            t("throughput <&>", 0.5, Bound::AtLeast).check(Some(0.25)),
            t("p99", 2.0, Bound::AtMost).check(Some(2.0)),
            t("gone", 1.0, Bound::AtMost).check(None),
        ];
        let svg = chart("l4", &outcomes);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("throughput &lt;&amp;&gt;"), "labels are escaped");
        // 0.25 / 0.5 = 0.5 of the target on a 0..2 scale: a quarter of the bar area.
        assert!(svg.contains(&format!(r#"width="{:.1}""#, BAR_W / 4.0)), "{svg}");
        assert_eq!(svg.matches("#c62828").count(), 2, "two misses");
        assert_eq!(svg.matches("#2e7d32").count(), 1, "one pass");
        assert!(svg.contains("not measured"));
    }
}
