//! The Script stage: the brief and plan become scenes with on-screen text, narration and a
//! duration each.
//!
//! [`ScriptWriter`] is the seam for other writers (an LLM provider later); [`TemplateWriter`] is
//! the deterministic one Aura ships: the same request always gives the same script, which keeps
//! renders reproducible and tests exact.

use serde::Serialize;

use crate::domain::spec::{Density, JobSpec, Pacing};

/// One scene of the video.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Scene {
    /// The large line on screen.
    pub heading: String,
    /// The smaller text under it.
    pub caption: String,
    /// What the voice says.
    pub narration: String,
    /// Whole seconds; the scenes' durations sum exactly to the target duration.
    pub duration_sec: u32,
}

/// The script of a video: scenes in order, the first one the title scene.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Script {
    pub scenes: Vec<Scene>,
}

impl Script {
    pub fn duration_sec(&self) -> u32 {
        self.scenes.iter().map(|s| s.duration_sec).sum()
    }
}

/// Writes a script for a job request.
pub trait ScriptWriter: Send + Sync {
    fn write(&self, spec: &JobSpec) -> anyhow::Result<Script>;
}

/// The deterministic writer: scene count from duration and pacing, sentences from templates.
#[derive(Debug, Default, Clone, Copy)]
pub struct TemplateWriter;

/// Seconds per scene each pacing aims for.
fn scene_secs(pacing: Pacing) -> u32 {
    match pacing {
        Pacing::Chill => 12,
        Pacing::Conversational => 8,
        Pacing::Fast => 5,
    }
}

/// Words of narration per second of scene each density aims for (flite speaks about 2.7/s).
fn words_per_sec(density: Density) -> f64 {
    match density {
        Density::Sparse => 1.6,
        Density::Balanced => 2.1,
        Density::Dense => 2.5,
    }
}

/// Splits `total` seconds into about `total / per` scenes of whole seconds, at least one, the
/// longer scenes first, summing exactly to `total`.
pub fn scene_durations(total: u32, per: u32) -> Vec<u32> {
    let n = ((f64::from(total) / f64::from(per.max(1))).round() as u32).clamp(1, total.max(1));
    let base = total / n;
    let extra = total % n;
    (0..n).map(|i| base + u32::from(i < extra)).collect()
}

/// Keeps whole words of `text` up to about `max_words`, ending with a full stop.
fn limit_words(text: &str, max_words: usize) -> String {
    let words: Vec<&str> = text.split_whitespace().collect();
    if words.len() <= max_words.max(3) {
        return words.join(" ");
    }
    let mut s = words[..max_words.max(3)].join(" ");
    s = s.trim_end_matches([',', ';', ':']).to_owned();
    if !s.ends_with(['.', '!', '?']) {
        s.push('.');
    }
    s
}

impl ScriptWriter for TemplateWriter {
    fn write(&self, spec: &JobSpec) -> anyhow::Result<Script> {
        let b = &spec.brief;
        let topic = b.topic.trim();
        let audience = b.audience.trim();
        let goal = b.goal.trim();
        let tone = b.tone.trim().to_lowercase();
        let durations = scene_durations(spec.plan_spec.target_duration, scene_secs(spec.plan_spec.pacing));
        let n = durations.len();
        let middle: [(&str, String, String); 4] = [
            (
                "Why it matters",
                format!("Why {topic} matters to {audience}"),
                format!("Why does {topic} matter? For {audience}, it changes how the work gets done."),
            ),
            (
                "The goal",
                format!("Goal: {goal}"),
                format!("Our goal is simple: {goal}. Keep that in mind as we go."),
            ),
            (
                "Key ideas",
                format!("The core ideas behind {topic}"),
                format!("Here are the core ideas behind {topic}, one step at a time."),
            ),
            (
                "In practice",
                format!("Putting {topic} to work"),
                format!("In practice, {audience} can start small and build from there."),
            ),
        ];
        let mut scenes = Vec::with_capacity(n);
        for (i, &duration_sec) in durations.iter().enumerate() {
            let budget = (f64::from(duration_sec) * words_per_sec(spec.plan_spec.density)).floor() as usize;
            let (heading, caption, narration) = if i == 0 {
                (
                    topic.to_owned(),
                    format!("For {audience}"),
                    format!("{topic}. A {tone} look, made for {audience}."),
                )
            } else if i + 1 == n && n > 2 {
                (
                    "To sum up".to_owned(),
                    format!("{topic}: {goal}"),
                    format!("To sum up: {topic}, for {audience}. Thanks for watching."),
                )
            } else {
                let (h, c, say) = &middle[(i - 1) % middle.len()];
                (h.to_string(), c.clone(), say.clone())
            };
            scenes.push(Scene { heading, caption, narration: limit_words(&narration, budget), duration_sec });
        }
        Ok(Script { scenes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_sum_exactly_to_the_target() {
        for total in 2..=600 {
            for per in [5, 8, 12] {
                let d = scene_durations(total, per);
                assert!(!d.is_empty());
                assert_eq!(d.iter().sum::<u32>(), total, "total {total} per {per}");
                assert!(d.iter().all(|&s| s >= 1));
            }
        }
        assert_eq!(scene_durations(60, 8), vec![8, 8, 8, 8, 7, 7, 7, 7]);
        assert_eq!(scene_durations(3, 5), vec![3]);
    }

    #[test]
    fn every_scene_has_text_and_the_first_is_the_title() -> anyhow::Result<()> {
        let spec = JobSpec::from_value(&serde_json::json!({
            "brief": {"topic": "It's 100% \"quoted\": a\\b"},
            "planSpec": {"targetDuration": "00:01:00", "pacing": "Fast"}
        }))?;
        let script = TemplateWriter.write(&spec)?;
        assert_eq!(script.duration_sec(), 60);
        assert_eq!(script.scenes[0].heading, "It's 100% \"quoted\": a\\b");
        assert!(script.scenes.iter().all(|s| !s.narration.is_empty() && !s.caption.is_empty()));
        Ok(())
    }
}
