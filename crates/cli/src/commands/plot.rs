use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A run's `metrics.jsonl`.
    pub metrics: PathBuf,
    /// Where to write the SVG picture.
    #[arg(long, default_value = "loss.svg")]
    pub out: PathBuf,
}

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 360.0;
const MARGIN: f64 = 48.0;

/// Draws the training loss (line) and eval loss (dots) against the step as an SVG.
pub fn run(args: Args) -> Result<()> {
    let text = std::fs::read_to_string(&args.metrics).with_context(|| format!("reading {}", args.metrics.display()))?;
    let (train, eval) = read_points(&text, &args.metrics)?;
    if train.is_empty() {
        bail!("{} has no logged loss to plot", args.metrics.display());
    }
    std::fs::write(&args.out, svg(&train, &eval)).with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!(
        "ember: {} points plotted to {}",
        train.len() + eval.len(),
        args.out.display()
    );
    Ok(())
}

type Points = Vec<(f64, f64)>;

/// (step, training loss) and (step, eval loss) of every line. A last line without its newline
/// that does not parse was torn by a killed run mid-write: it is left out, not an error.
fn read_points(text: &str, path: &Path) -> Result<(Points, Points)> {
    let (mut train, mut eval) = (Vec::new(), Vec::new());
    let torn_tail = !text.ends_with('\n');
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let value: serde_json::Value = match serde_json::from_str(line) {
            Ok(value) => value,
            Err(_) if torn_tail && i + 1 == lines.len() => {
                eprintln!(
                    "ember: {}:{}: skipping the incomplete last line (the run was stopped while writing it)",
                    path.display(),
                    i + 1
                );
                continue;
            }
            Err(e) => bail!("{}:{}: not a JSON object: {e}", path.display(), i + 1),
        };
        let step = value["step"]
            .as_f64()
            .with_context(|| format!("{}:{}: no `step`", path.display(), i + 1))?;
        if let Some(loss) = value["loss"].as_f64().filter(|l| l.is_finite()) {
            train.push((step, loss));
        }
        if let Some(loss) = value["eval_loss"].as_f64() {
            eval.push((step, loss));
        }
    }
    Ok((train, eval))
}

fn svg(train: &[(f64, f64)], eval: &[(f64, f64)]) -> String {
    let all = || train.iter().chain(eval);
    let max_step = all().map(|p| p.0).fold(1.0, f64::max);
    let (lo, hi) = all().fold((f64::MAX, f64::MIN), |(lo, hi), p| (lo.min(p.1), hi.max(p.1)));
    let (lo, hi) = if hi > lo { (lo, hi) } else { (lo - 1.0, hi + 1.0) };
    let x = |step: f64| MARGIN + step / max_step * (WIDTH - 2.0 * MARGIN);
    let y = |loss: f64| HEIGHT - MARGIN - (loss - lo) / (hi - lo) * (HEIGHT - 2.0 * MARGIN);
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    let (left, right, top, bottom) = (MARGIN, WIDTH - MARGIN, MARGIN, HEIGHT - MARGIN);
    let _ = writeln!(
        out,
        "<path d=\"M{left},{top} V{bottom} H{right}\" stroke=\"#444\" fill=\"none\"/>"
    );
    for i in 0..=4 {
        let loss = lo + (hi - lo) * i as f64 / 4.0;
        let _ = writeln!(
            out,
            "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{loss:.2}</text>",
            left - 6.0,
            y(loss) + 4.0
        );
        let step = max_step * i as f64 / 4.0;
        let _ = writeln!(
            out,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{step:.0}</text>",
            x(step),
            bottom + 18.0
        );
    }
    let _ = writeln!(
        out,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">step</text>",
        WIDTH / 2.0,
        HEIGHT - 8.0
    );
    let points: Vec<String> = train.iter().map(|&(s, l)| format!("{:.1},{:.1}", x(s), y(l))).collect();
    let _ = writeln!(
        out,
        "<polyline points=\"{}\" fill=\"none\" stroke=\"#d9480f\" stroke-width=\"2\"/>",
        points.join(" ")
    );
    for &(s, l) in eval {
        let _ = writeln!(
            out,
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"4\" fill=\"#1c7ed6\"/>",
            x(s),
            y(l)
        );
    }
    let _ = writeln!(
        out,
        "<text x=\"{}\" y=\"{}\" fill=\"#d9480f\">training loss</text>",
        right - 150.0,
        top - 18.0
    );
    if !eval.is_empty() {
        let _ = writeln!(
            out,
            "<text x=\"{}\" y=\"{}\" fill=\"#1c7ed6\">eval loss</text>",
            right - 150.0,
            top - 4.0
        );
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_torn_last_line_is_skipped_and_a_broken_middle_line_is_an_error() {
        let path = Path::new("metrics.jsonl");
        let torn = "{\"step\":1,\"loss\":2.0}\n{\"step\":2,\"loss\":1.5,\"eval_loss\":1.7}\n{\"step\":3,\"lo";
        let (train, eval) = read_points(torn, path).unwrap();
        assert_eq!(train, [(1.0, 2.0), (2.0, 1.5)]);
        assert_eq!(eval, [(2.0, 1.7)]);
        let broken = "{\"step\":1,\"loss\":2.0}\n{\"step\":2,\"lo\n{\"step\":3,\"loss\":1.0}\n";
        let err = read_points(broken, path).unwrap_err().to_string();
        assert!(err.contains("metrics.jsonl:2"), "{err}");
    }
}
