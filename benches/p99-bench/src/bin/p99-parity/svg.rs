//! The two plots of a parity run, written as plain SVG: the classic HdrHistogram
//! percentile-distribution plot (x: 1/(1-p) on a log scale, so the tail gets room) and
//! throughput bars with ratios to the baseline.

use std::fmt::Write as _;

const COLORS: [&str; 8] =
    ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

pub struct Curve {
    pub label: String,
    /// (percentile 0..100, microseconds)
    pub points: Vec<(f64, f64)>,
}

/// Latency by percentile, one line per variant. Percentiles are drawn up to 99.999%.
pub fn latency_plot(title: &str, subtitle: &str, curves: &[Curve]) -> String {
    let (w, h) = (900.0, 520.0);
    let (l, r, t, b) = (80.0, 220.0, 60.0, 60.0);
    let pw = w - l - r;
    let ph = h - t - b;
    let max_x = 5.0; // 99.999%
    let xof = |p: f64| {
        let p = p.min(99.999);
        (1.0 / (1.0 - p / 100.0)).log10().min(max_x)
    };
    let all: Vec<f64> =
        curves.iter().flat_map(|c| c.points.iter().map(|p| p.1)).filter(|v| *v > 0.0).collect();
    let lo = all.iter().cloned().fold(f64::INFINITY, f64::min);
    let hi = all.iter().cloned().fold(0.0, f64::max);
    let (ylo, yhi) = if all.is_empty() {
        (0.0, 3.0)
    } else {
        (lo.max(0.1).log10().floor(), hi.max(lo * 10.0).log10().ceil())
    };
    let px = |x: f64| l + x / max_x * pw;
    let py = |us: f64| t + ph - (us.max(10f64.powf(ylo)).log10() - ylo) / (yhi - ylo) * ph;
    let mut s = String::new();
    let _ = write!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="24" font-size="16" font-weight="bold">{}</text>
<text x="{}" y="42" fill="#555">{}</text>
"##,
        l,
        esc(title),
        l,
        esc(subtitle)
    );
    // Grid and axes.
    for (i, lab) in ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"].iter().enumerate() {
        let x = px(i as f64);
        let _ =
            writeln!(s, r##"<line x1="{x}" y1="{t}" x2="{x}" y2="{}" stroke="#ddd"/>"##, t + ph);
        let _ =
            writeln!(s, r#"<text x="{x}" y="{}" text-anchor="middle">{lab}</text>"#, t + ph + 18.0);
    }
    let mut d = ylo as i32;
    while d <= yhi as i32 {
        for m in [1.0, 2.0, 5.0] {
            let v = m * 10f64.powi(d);
            if v.log10() > yhi + 1e-9 {
                break;
            }
            let y = py(v);
            let stroke = if m == 1.0 { "#ccc" } else { "#eee" };
            let _ = writeln!(
                s,
                r#"<line x1="{l}" y1="{y}" x2="{}" y2="{y}" stroke="{stroke}"/>"#,
                l + pw
            );
            let label = if v >= 1000.0 { format!("{} ms", v / 1000.0) } else { format!("{v} µs") };
            let _ = writeln!(
                s,
                r#"<text x="{}" y="{}" text-anchor="end">{label}</text>"#,
                l - 6.0,
                y + 4.0
            );
        }
        d += 1;
    }
    let _ = writeln!(
        s,
        r##"<rect x="{l}" y="{t}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>
<text x="{}" y="{}" text-anchor="middle">percentile (log scale of 1/(1-p))</text>
<text x="18" y="{}" transform="rotate(-90 18 {})" text-anchor="middle">latency</text>"##,
        l + pw / 2.0,
        h - 16.0,
        t + ph / 2.0,
        t + ph / 2.0
    );
    for (i, c) in curves.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let pts: Vec<String> = c
            .points
            .iter()
            .filter(|p| p.0 <= 99.9991 && p.1 > 0.0)
            .map(|&(p, us)| format!("{:.1},{:.1}", px(xof(p)), py(us)))
            .collect();
        if !pts.is_empty() {
            let _ = writeln!(
                s,
                r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
                pts.join(" ")
            );
        }
        let ly = t + 10.0 + i as f64 * 20.0;
        let _ = writeln!(
            s,
            r#"<line x1="{}" y1="{ly}" x2="{}" y2="{ly}" stroke="{color}" stroke-width="3"/><text x="{}" y="{}">{}</text>"#,
            l + pw + 12.0,
            l + pw + 36.0,
            l + pw + 42.0,
            ly + 4.0,
            esc(&c.label)
        );
    }
    s.push_str("</svg>\n");
    s
}

pub struct Bar {
    pub label: String,
    /// None: not measured (the note says why).
    pub value: Option<f64>,
    pub min: f64,
    pub max: f64,
    pub note: String,
}

/// Horizontal bars of requests/s (median), whiskers from the slowest to the fastest round.
pub fn throughput_bars(title: &str, subtitle: &str, bars: &[Bar]) -> String {
    let row = 34.0;
    let (l, r, t) = (200.0, 340.0, 60.0);
    let w = 1000.0;
    let pw = w - l - r;
    let h = t + bars.len() as f64 * row + 40.0;
    let top =
        bars.iter().filter_map(|b| b.value.map(|v| v.max(b.max))).fold(0.0, f64::max).max(1.0);
    let mut s = String::new();
    let _ = write!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="20" y="24" font-size="16" font-weight="bold">{}</text>
<text x="20" y="42" fill="#555">{}</text>
"##,
        esc(title),
        esc(subtitle)
    );
    for (i, b) in bars.iter().enumerate() {
        let y = t + i as f64 * row;
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
            l - 8.0,
            y + row / 2.0 + 4.0,
            esc(&b.label)
        );
        match b.value {
            Some(v) => {
                let bw = v / top * pw;
                let color = COLORS[i % COLORS.len()];
                let _ = writeln!(
                    s,
                    r#"<rect x="{l}" y="{}" width="{bw:.1}" height="{}" fill="{color}" opacity="0.8"/>"#,
                    y + 6.0,
                    row - 12.0
                );
                let (x0, x1) = (l + b.min / top * pw, l + b.max / top * pw);
                let ym = y + row / 2.0;
                let _ = writeln!(
                    s,
                    r##"<line x1="{x0:.1}" y1="{ym}" x2="{x1:.1}" y2="{ym}" stroke="#222"/><line x1="{x0:.1}" y1="{}" x2="{x0:.1}" y2="{}" stroke="#222"/><line x1="{x1:.1}" y1="{}" x2="{x1:.1}" y2="{}" stroke="#222"/>"##,
                    ym - 5.0,
                    ym + 5.0,
                    ym - 5.0,
                    ym + 5.0
                );
                let _ = writeln!(
                    s,
                    r#"<text x="{}" y="{}">{} req/s {}</text>"#,
                    l + bw.max(x1 - l) + 8.0,
                    ym + 4.0,
                    group(v),
                    esc(&b.note)
                );
            }
            None => {
                let _ = writeln!(
                    s,
                    r##"<text x="{}" y="{}" fill="#888">{}</text>"##,
                    l + 4.0,
                    y + row / 2.0 + 4.0,
                    esc(&b.note)
                );
            }
        }
    }
    s.push_str("</svg>\n");
    s
}

/// 1234567.8 -> "1,234,568"
pub fn group(v: f64) -> String {
    let n = v.round() as i64;
    let s = n.abs().to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plots_are_well_formed_and_carry_every_variant() {
        let curves = vec![
            Curve { label: "a<b".into(), points: vec![(0.0, 10.0), (99.0, 50.0), (99.999, 900.0)] },
            Curve { label: "c".into(), points: vec![] },
        ];
        let s = latency_plot("t", "s", &curves);
        assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"));
        assert!(s.contains("a&lt;b") && s.contains(">c<"));
        assert_eq!(s.matches("<polyline").count(), 1);
        let bars = vec![
            Bar {
                label: "x".into(),
                value: Some(1000.0),
                min: 900.0,
                max: 1100.0,
                note: "(1.00×)".into(),
            },
            Bar { label: "y".into(), value: None, min: 0.0, max: 0.0, note: "not built".into() },
        ];
        let s = throughput_bars("t", "s", &bars);
        assert!(s.contains("1,000 req/s") && s.contains("not built"));
        assert_eq!(group(1234567.8), "1,234,568");
    }
}
