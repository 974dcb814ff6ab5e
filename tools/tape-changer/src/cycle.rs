//! The tape cycle: which tape `load next` may overwrite.
//!
//! Amanda's rule is that the `tapecycle - 1` most recently written tapes hold dumps still needed,
//! so they are never overwritten. Among the rest we prefer a tape that holds nothing yet (a
//! labelled, never written tape, or an empty slot when `autolabel` may label it), scanning from
//! the slot after the current one as chg-multi does; failing that, the oldest-written tape.

use crate::state::SlotState;

/// What `load next` decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// A labelled tape never written.
    Fresh { slot: usize },
    /// An empty slot that autolabel labels with this label.
    AutoLabel { slot: usize, label: String },
    /// The oldest-written tape outside the cycle: its dumps are given up.
    Reuse { slot: usize },
}

impl Choice {
    pub fn slot(&self) -> usize {
        match self {
            Choice::Fresh { slot } | Choice::AutoLabel { slot, .. } | Choice::Reuse { slot } => {
                *slot
            }
        }
    }
}

/// The inputs of the choice.
pub struct Cycle<'a> {
    /// `(slot number, what it holds)`, for every slot, in slot order.
    pub slots: Vec<(usize, &'a SlotState)>,
    pub current: Option<usize>,
    pub tapecycle: usize,
    pub label_ok: &'a dyn Fn(&str) -> bool,
    pub autolabel: &'a dyn Fn(usize) -> Option<String>,
}

/// Slot numbers of the written tapes that the cycle protects, newest first.
pub fn protected(slots: &[(usize, &SlotState)], tapecycle: usize) -> Vec<usize> {
    let mut written: Vec<(&str, usize)> = slots
        .iter()
        .filter(|(_, s)| s.written())
        .map(|(n, s)| (s.datestamp.as_deref().unwrap_or(""), *n))
        .collect();
    // Newest first; datestamps of equal length compare as text.
    written.sort_by(|a, b| b.0.cmp(a.0).then(a.1.cmp(&b.1)));
    written
        .into_iter()
        .take(tapecycle.saturating_sub(1))
        .map(|(_, n)| n)
        .collect()
}

impl std::fmt::Debug for Cycle<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cycle")
            .field("current", &self.current)
            .field("tapecycle", &self.tapecycle)
            .finish_non_exhaustive()
    }
}

impl Cycle<'_> {
    pub fn choose(&self) -> Result<Choice, String> {
        let count = self.slots.len();
        let start = self
            .slots
            .iter()
            .position(|(n, _)| Some(*n) == self.current)
            .map(|i| i + 1)
            .unwrap_or(0);
        let scan = (0..count).map(|i| self.slots[(start + i) % count]);
        for (number, slot) in scan {
            if slot.error.is_some() {
                continue;
            }
            match &slot.label {
                Some(label) if slot.datestamp.as_deref() == Some("X") && (self.label_ok)(label) => {
                    return Ok(Choice::Fresh { slot: number });
                }
                None => {
                    if let Some(label) = (self.autolabel)(number) {
                        return Ok(Choice::AutoLabel {
                            slot: number,
                            label,
                        });
                    }
                }
                _ => {}
            }
        }
        let protected = protected(&self.slots, self.tapecycle);
        let oldest = self
            .slots
            .iter()
            .filter(|(n, s)| {
                s.error.is_none()
                    && s.written()
                    && !protected.contains(n)
                    && s.label.as_deref().is_some_and(|l| (self.label_ok)(l))
            })
            .min_by(|a, b| a.1.datestamp.cmp(&b.1.datestamp).then(a.0.cmp(&b.0)));
        match oldest {
            Some((slot, _)) => Ok(Choice::Reuse { slot: *slot }),
            None => {
                let written = self.slots.iter().filter(|(_, s)| s.written()).count();
                Err(format!(
                    "no tape may be written: {written} of {count} slots hold dumps inside the tape cycle of {} (tapecycle - 1 = {} newest are kept), none is labelled and unwritten{}",
                    self.tapecycle,
                    self.tapecycle.saturating_sub(1),
                    if (self.autolabel)(1).is_some() {
                        ""
                    } else {
                        ", and autolabel is off"
                    }
                ))
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn tape(label: Option<&str>, date: Option<&str>) -> SlotState {
        SlotState {
            device: String::new(),
            label: label.map(str::to_string),
            datestamp: date.map(str::to_string),
            ..SlotState::default()
        }
    }

    fn choose(
        tapes: &[SlotState],
        current: Option<usize>,
        tapecycle: usize,
        autolabel: bool,
    ) -> Result<Choice, String> {
        let label_ok = |l: &str| l.starts_with("Daily");
        let auto = |n: usize| autolabel.then(|| format!("Daily-{n:02}"));
        Cycle {
            slots: tapes.iter().enumerate().map(|(i, s)| (i + 1, s)).collect(),
            current,
            tapecycle,
            label_ok: &label_ok,
            autolabel: &auto,
        }
        .choose()
    }

    #[test]
    fn fresh_tapes_first_scanning_after_the_current_slot() {
        let tapes = [
            tape(Some("Daily-01"), Some("20260101000000")),
            tape(Some("Daily-02"), Some("X")),
            tape(Some("Daily-03"), Some("X")),
        ];
        assert_eq!(
            choose(&tapes, Some(1), 3, false),
            Ok(Choice::Fresh { slot: 2 })
        );
        assert_eq!(
            choose(&tapes, Some(2), 3, false),
            Ok(Choice::Fresh { slot: 3 })
        );
    }

    #[test]
    fn empty_slots_only_with_autolabel() {
        let tapes = [
            tape(Some("Daily-01"), Some("20260101000000")),
            tape(None, None),
        ];
        assert_eq!(
            choose(&tapes, Some(1), 2, true),
            Ok(Choice::AutoLabel {
                slot: 2,
                label: "Daily-02".to_string()
            })
        );
        // tapecycle 2 keeps the one newest tape: nothing may be written.
        let err = choose(&tapes, Some(1), 2, false).unwrap_err();
        assert!(err.contains("autolabel is off"), "{err}");
    }

    #[test]
    fn the_oldest_tape_outside_the_cycle_is_reused() {
        let tapes = [
            tape(Some("Daily-01"), Some("20260103000000")),
            tape(Some("Daily-02"), Some("20260101000000")),
            tape(Some("Daily-03"), Some("20260102000000")),
            tape(Some("Daily-04"), Some("20260104000000")),
        ];
        assert_eq!(
            choose(&tapes, Some(4), 3, false),
            Ok(Choice::Reuse { slot: 2 })
        );
        // tapecycle 4: the three newest (01, 03, 04) are kept, 02 is the only one left.
        assert_eq!(
            choose(&tapes, Some(4), 4, false),
            Ok(Choice::Reuse { slot: 2 })
        );
        // tapecycle 5: all four are needed.
        assert!(choose(&tapes, Some(4), 5, false).is_err());
    }

    #[test]
    fn never_a_tape_inside_the_cycle_or_not_matching_labelstr() {
        let tapes = [
            tape(Some("Weekly-01"), Some("20250101000000")),
            tape(Some("Daily-02"), Some("20260101000000")),
            tape(Some("Daily-03"), Some("20260102000000")),
        ];
        // Weekly-01 is the oldest but labelstr does not allow it; Daily-03 is protected.
        assert_eq!(
            choose(&tapes, None, 2, false),
            Ok(Choice::Reuse { slot: 2 })
        );
        assert!(choose(&tapes, None, 3, false).is_err());
        assert_eq!(
            protected(
                &tapes
                    .iter()
                    .enumerate()
                    .map(|(i, s)| (i + 1, s))
                    .collect::<Vec<_>>(),
                3
            ),
            vec![3, 2]
        );
    }

    #[test]
    fn unreadable_slots_are_skipped() {
        let mut broken = tape(None, None);
        broken.error = Some("not an Amanda header".to_string());
        let tapes = [broken, tape(None, None)];
        assert_eq!(
            choose(&tapes, None, 1, true),
            Ok(Choice::AutoLabel {
                slot: 2,
                label: "Daily-02".to_string()
            })
        );
    }
}
