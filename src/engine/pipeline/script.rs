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

/// Words that may not end a caption or a sentence: a phrase ending in one of them is cut short.
const DANGLING: [&str; 16] = [
    "a", "an", "the", "to", "of", "for", "and", "or", "with", "behind", "about", "at", "in", "on", "by",
    "from",
];

/// Words a question starts with. A topic that starts with one is a question or a `why …`
/// clause ("Why SQLite is enough"), not a noun: templates that need a noun refer to it instead.
const QUESTION_WORDS: [&str; 22] = [
    "why", "how", "what", "when", "where", "who", "whom", "whose", "which", "is", "are", "was", "were",
    "can", "could", "should", "would", "will", "do", "does", "did", "has",
];

/// A topic longer than this (in characters) is named in full on the title scene only.
const LONG_TOPIC_CHARS: usize = 60;

/// How the templates may use a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TopicKind {
    /// A short noun phrase ("SQLite", "Rust ownership"): it can stand inside a sentence.
    Noun,
    /// A question or a question-word clause ("Why SQLite is enough", "Is Rust fast?").
    Question,
    /// Too long to repeat, or mostly in another script, so its grammar cannot be read here
    /// ("Почему SQLite достаточно" is a question too): named in full on the title scene only.
    Opaque,
}

fn topic_kind(topic: &str) -> TopicKind {
    let letters = topic.chars().filter(|c| c.is_alphabetic()).count();
    let latin = topic.chars().filter(|c| c.is_ascii_alphabetic()).count();
    if topic.chars().count() > LONG_TOPIC_CHARS || latin * 2 < letters {
        return TopicKind::Opaque;
    }
    let first = topic.split_whitespace().next().unwrap_or("").to_lowercase();
    let first = first.trim_matches(|c: char| !c.is_alphanumeric());
    if topic.ends_with('?') || QUESTION_WORDS.contains(&first) {
        TopicKind::Question
    } else {
        TopicKind::Noun
    }
}

/// The audience as it reads after "for" or "to": the default `General` is everyone.
fn audience_phrase(audience: &str) -> String {
    match audience.trim() {
        "" => "everyone".to_owned(),
        a if a.eq_ignore_ascii_case("general") || a.eq_ignore_ascii_case("everyone") => "everyone".to_owned(),
        a => a.to_owned(),
    }
}

/// `a` or `an` before `word`, by its first letter (good enough for adjectives like tones).
fn article(word: &str) -> &'static str {
    match word.chars().next().map(|c| c.to_ascii_lowercase()) {
        Some('a' | 'e' | 'i' | 'o' | 'u') => "an",
        _ => "a",
    }
}

/// The words of `text`, lowercased, without surrounding punctuation.
fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split_whitespace()
        .map(|w| w.trim_matches(|c: char| !c.is_alphanumeric()).to_lowercase())
        .filter(|w| !w.is_empty())
}

/// Whether two neighbouring words of `text` are the same word ("Why Why …").
pub fn has_doubled_word(text: &str) -> bool {
    let w: Vec<String> = words(text).collect();
    w.windows(2).any(|p| p[0] == p[1])
}

/// Whether `text` (or one of its sentences) ends in a word that leaves the phrase hanging.
pub fn has_dangling_end(text: &str) -> bool {
    text.split(['.', '?', '!', ':', ';'])
        .filter(|part| !part.trim().is_empty())
        .any(|part| words(part).last().is_some_and(|w| DANGLING.contains(&w.as_str())))
}

/// `preferred` when it reads well (no doubled word where the topic meets the template),
/// else `fallback`, which does not contain the topic.
fn either(preferred: String, fallback: String) -> String {
    if has_doubled_word(&preferred) || has_dangling_end(&preferred) { fallback } else { preferred }
}

/// Whole sentences of `text` while they fit in about `max_words` (at least the first one):
/// the narration is never cut in the middle of a phrase. Audio fits what is left to the scene.
fn limit_words(text: &str, max_words: usize) -> String {
    let mut out = String::new();
    let mut used = 0;
    let mut rest = text.trim();
    while !rest.is_empty() {
        let end = rest
            .char_indices()
            .find(|&(i, c)| {
                matches!(c, '.' | '?' | '!') && rest[i + c.len_utf8()..].starts_with(char::is_whitespace)
            })
            .map_or(rest.len(), |(i, c)| i + c.len_utf8());
        let sentence = rest[..end].trim();
        let n = sentence.split_whitespace().count();
        if !out.is_empty() && used + n > max_words.max(3) {
            break;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(sentence);
        used += n;
        rest = rest[end..].trim_start();
    }
    out
}

/// The topic as a sentence of its own: a question keeps its `?`, anything else gets a full stop.
fn as_sentence(topic: &str) -> String {
    let t = topic.trim_end_matches(['.', '!', ',', ';', ':']).trim_end();
    if t.ends_with(['?', '。', '？', '！']) { t.to_owned() } else { format!("{t}.") }
}

impl ScriptWriter for TemplateWriter {
    fn write(&self, spec: &JobSpec) -> anyhow::Result<Script> {
        let b = &spec.brief;
        let topic = b.topic.trim();
        let kind = topic_kind(topic);
        let audience = audience_phrase(&b.audience);
        let goal = b.goal.trim().trim_end_matches(['.', '!']);
        let tone = b.tone.trim().to_lowercase();
        let a_tone = if tone.is_empty() { "a".to_owned() } else { format!("{} {tone}", article(&tone)) };
        // How a template names the subject when the topic cannot stand in its sentence.
        let subject = if kind == TopicKind::Question { "the question" } else { "this topic" };
        let about = |with_topic: String, without: String| {
            if kind == TopicKind::Noun { either(with_topic, without) } else { without }
        };
        let durations = scene_durations(spec.plan_spec.target_duration, scene_secs(spec.plan_spec.pacing));
        let n = durations.len();
        let middle: [(&str, String, String); 4] = [
            (
                "Why it matters",
                about(
                    format!("Why {topic} matters to {audience}"),
                    format!("Why {subject} matters to {audience}"),
                ),
                about(
                    format!("Why does {topic} matter? For {audience}, it changes how the work gets done."),
                    format!("Why does {subject} matter? For {audience}, it changes how the work gets done."),
                ),
            ),
            (
                "The goal",
                format!("Goal: {goal}"),
                either(
                    format!("Our goal is simple: {goal}. Keep that in mind as we go."),
                    "Keep the goal in mind as we go.".to_owned(),
                ),
            ),
            (
                "Key ideas",
                about(format!("The core ideas behind {topic}"), "The core ideas, one by one".to_owned()),
                about(
                    format!("Here are the core ideas behind {topic}, one step at a time."),
                    "Here are the core ideas, one step at a time.".to_owned(),
                ),
            ),
            (
                "In practice",
                about(format!("Putting {topic} to work"), "Putting it to work".to_owned()),
                format!("In practice, {audience} can start small and build from there."),
            ),
        ];
        let title_narration = match kind {
            TopicKind::Opaque => {
                format!("{} look at today's topic, made for {audience}.", capitalized(&a_tone))
            }
            _ => format!("{} {} look, made for {audience}.", as_sentence(topic), capitalized(&a_tone)),
        };
        let mut scenes = Vec::with_capacity(n);
        for (i, &duration_sec) in durations.iter().enumerate() {
            let budget = (f64::from(duration_sec) * words_per_sec(spec.plan_spec.density)).floor() as usize;
            let (heading, caption, narration) = if i == 0 {
                (topic.to_owned(), format!("For {audience}"), title_narration.clone())
            } else if i + 1 == n && n > 2 {
                (
                    "To sum up".to_owned(),
                    about(
                        format!("{topic}, in short"),
                        if kind == TopicKind::Question { "The answer, in short" } else { "In short" }
                            .to_owned(),
                    ),
                    about(
                        format!("To sum up: {topic}, for {audience}. Thanks for watching."),
                        format!("That is {subject}, for {audience}. Thanks for watching."),
                    ),
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

/// `text` with its first letter upper case.
fn capitalized(text: &str) -> String {
    let mut chars = text.chars();
    chars.next().map(|c| c.to_uppercase().chain(chars).collect()).unwrap_or_default()
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

    /// Every caption and narration of a script for `topic` (a minute, fast pacing: every template).
    fn texts(topic: &str) -> anyhow::Result<Vec<String>> {
        let spec = JobSpec::from_value(&serde_json::json!({
            "brief": {"topic": topic},
            "planSpec": {"targetDuration": "00:01:00", "pacing": "Fast", "density": "Dense"}
        }))?;
        let script = TemplateWriter.write(&spec)?;
        Ok(script.scenes.iter().flat_map(|s| [s.caption.clone(), s.narration.clone()]).collect())
    }

    #[test]
    fn captions_and_narration_read_as_english_for_any_kind_of_topic() -> anyhow::Result<()> {
        let long = "A very long topic about how a small team ships a video engine on one SQLite file, \
                    keeps every event, streams it to every browser and still sleeps at night, \
                    told in one breath";
        let long: String = long.split_whitespace().collect::<Vec<_>>().join(" ").chars().take(200).collect();
        let topics = [
            "Why SQLite is enough",
            "Why is SQLite enough?",
            "How DNS works",
            "What is Rust?",
            "Is Rust fast?",
            "SQLite",
            "Why",
            "Matters",
            "Ideas",
            "Work",
            long.as_str(),
            "東京の歴史",
            "なぜSQLiteで十分なのか？",
            "Почему SQLite достаточно",
            "История Москвы",
            "It's 100% \"quoted\": a\\b",
        ];
        for topic in topics {
            let all = texts(topic)?;
            for text in &all {
                assert!(!has_doubled_word(text), "doubled word for {topic:?}: {text:?}");
                assert!(!has_dangling_end(text), "dangling phrase for {topic:?}: {text:?}");
                assert!(!text.contains("  ") && !text.contains("{"), "template hole for {topic:?}: {text:?}");
            }
            let narration: Vec<&String> = all.iter().skip(1).step_by(2).collect();
            for said in narration {
                assert!(
                    said.ends_with(['.', '?', '!', '。', '？']),
                    "unfinished sentence for {topic:?}: {said:?}"
                );
            }
        }
        Ok(())
    }

    #[test]
    fn the_topic_from_the_issue_is_not_glued_into_a_sentence() -> anyhow::Result<()> {
        let all = texts("Why SQLite is enough")?.join(" | ");
        assert!(!all.contains("Why Why"), "{all}");
        assert!(!all.contains("matters to General"), "{all}");
        assert!(all.contains("Why the question matters to everyone"), "{all}");
        Ok(())
    }

    #[test]
    fn the_checks_themselves_catch_what_they_name() {
        assert!(has_doubled_word("Why Why SQLite is enough matters to General"));
        assert!(has_dangling_end("Here are the core ideas behind."));
        assert!(has_dangling_end("Putting it to"));
        assert!(!has_dangling_end("Putting SQLite to work."));
        assert_eq!(limit_words("One two three. Four five six. Seven.", 4), "One two three.");
        assert_eq!(limit_words("One two three four five six.", 2), "One two three four five six.");
        assert_eq!(article("informative"), "an");
        assert_eq!(article("technical"), "a");
    }
}
