//! The tape cycle: which tape `load next` may overwrite.
//!
//! Amanda's rule is that the `tapecycle - 1` most recently written tapes hold dumps still needed,
//! so they are never overwritten. Among the rest we prefer a tape that holds nothing yet (a
//! labelled, never written tape, or a slot that `autolabel`'s conditions let it label), scanning
//! from the slot after the current one as chg-multi does; failing that, the oldest-written tape.

use std::collections::BTreeSet;

use crate::config::{AutoLabel, Condition, NoLabel};
use crate::state::SlotState;

/// What `load next` decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// A labelled tape never written.
    Fresh { slot: usize },
    /// A slot autolabel labels with this label (empty, or foreign as its conditions allow).
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
    /// Whether a label matches labelstr.
    pub label_ok: &'a dyn Fn(&str) -> bool,
    pub autolabel: Option<&'a AutoLabel>,
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
        // Amanda picks the lowest number no tape has yet.
        let used: BTreeSet<&str> = self
            .slots
            .iter()
            .filter_map(|(_, s)| s.label.as_deref())
            .collect();
        let mut passed_over = Vec::new();
        for (number, slot) in scan {
            let condition = match (&slot.error, &slot.label) {
                // The tape-start object is there but is not an Amanda label.
                (Some(_), _) => Condition::NonAmanda,
                (None, None) => Condition::Empty,
                (None, Some(label)) if (self.label_ok)(label) => {
                    if slot.datestamp.as_deref() == Some("X") {
                        return Ok(Choice::Fresh { slot: number });
                    }
                    continue;
                }
                (None, Some(_)) => Condition::OtherConfig,
            };
            let Some(autolabel) = self.autolabel else {
                continue;
            };
            if !autolabel.conditions.allows(condition) {
                continue;
            }
            match autolabel.label(number, &|label| used.contains(label)) {
                // Amanda: the volume is not used if the generated label does not match labelstr.
                Ok(label) if (self.label_ok)(&label) => {
                    return Ok(Choice::AutoLabel {
                        slot: number,
                        label,
                    });
                }
                Ok(label) => passed_over.push(format!(
                    "slot {number} would be labelled {label}, which does not match labelstr"
                )),
                Err(NoLabel::Exists(label)) => passed_over.push(format!(
                    "slot {number} would be labelled {label}, which a tape already has"
                )),
                Err(NoLabel::Exhausted(message)) => return Err(message),
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
                    match self.autolabel {
                        None => ", and autolabel is off".to_string(),
                        Some(_) if passed_over.is_empty() => String::new(),
                        Some(_) => format!("; autolabel: {}", passed_over.join("; ")),
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
    use crate::config::Names;

    fn tape(label: Option<&str>, date: Option<&str>) -> SlotState {
        SlotState {
            device: String::new(),
            label: label.map(str::to_string),
            datestamp: date.map(str::to_string),
            ..SlotState::default()
        }
    }

    fn broken() -> SlotState {
        let mut slot = tape(None, None);
        slot.error = Some("not an Amanda header".to_string());
        slot
    }

    /// labelstr: labels starting with "Daily"; `template`: an autolabel directive.
    fn choose_with(
        tapes: &[SlotState],
        current: Option<usize>,
        tapecycle: usize,
        template: Option<&str>,
    ) -> Result<Choice, String> {
        let label_ok = |l: &str| l.starts_with("Daily");
        let autolabel = template.map(|t| {
            AutoLabel::parse(
                t,
                &Names {
                    config: Some("DailySet1".to_string()),
                    org: None,
                },
            )
            .unwrap()
        });
        Cycle {
            slots: tapes.iter().enumerate().map(|(i, s)| (i + 1, s)).collect(),
            current,
            tapecycle,
            label_ok: &label_ok,
            autolabel: autolabel.as_ref(),
        }
        .choose()
    }

    fn choose(
        tapes: &[SlotState],
        current: Option<usize>,
        tapecycle: usize,
        autolabel: bool,
    ) -> Result<Choice, String> {
        choose_with(tapes, current, tapecycle, autolabel.then_some("Daily-%%"))
    }

    fn auto(slot: usize, label: &str) -> Result<Choice, String> {
        Ok(Choice::AutoLabel {
            slot,
            label: label.to_string(),
        })
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
        let tapes = [broken(), tape(None, None)];
        // The lowest unused number, not the slot number.
        assert_eq!(choose(&tapes, None, 1, true), auto(2, "Daily-01"));
    }

    #[test]
    fn autolabel_takes_the_lowest_number_no_tape_has() {
        let tapes = [
            tape(Some("Daily-01"), Some("20260101000000")),
            tape(Some("Daily-03"), Some("20260102000000")),
            tape(None, None),
            tape(None, None),
        ];
        assert_eq!(choose(&tapes, Some(2), 4, true), auto(3, "Daily-02"));
        let tapes = [
            tape(Some("Daily-01"), Some("20260101000000")),
            tape(Some("Daily-02"), Some("X")),
            tape(None, None),
        ];
        // A fresh tape comes first in the scan; after it, the empty slot gets Daily-03.
        assert_eq!(
            choose(&tapes, Some(1), 3, true),
            Ok(Choice::Fresh { slot: 2 })
        );
        assert_eq!(choose(&tapes, Some(2), 3, true), auto(3, "Daily-03"));
        // Letters the same way.
        let tapes = [tape(Some("Daily-AA"), Some("X")), tape(None, None)];
        assert_eq!(
            choose_with(&tapes, Some(1), 2, Some("Daily-!!")),
            auto(2, "Daily-AB")
        );
        // $3s: the slot number, padded.
        assert_eq!(
            choose_with(&tapes, Some(1), 2, Some("$c-$3s")),
            Ok(Choice::AutoLabel {
                slot: 2,
                label: "DailySet1-002".to_string()
            })
        );
    }

    #[test]
    fn conditions_decide_which_slots_autolabel_may_label() {
        let foreign = tape(Some("Weekly-01"), Some("20250101000000"));
        let tapes = [broken(), foreign.clone(), tape(None, None)];
        // Default (volume-error empty): only the empty slot, wherever the scan starts.
        for current in [None, Some(1), Some(2), Some(3)] {
            assert_eq!(
                choose_with(&tapes, current, 3, Some("Daily-%%")),
                auto(3, "Daily-01"),
                "current {current:?}"
            );
        }
        assert_eq!(
            choose_with(&tapes, None, 3, Some("\"Daily-%%\" non-amanda")),
            auto(1, "Daily-01")
        );
        assert_eq!(
            choose_with(&tapes, Some(1), 3, Some("\"Daily-%%\" other-config")),
            auto(2, "Daily-01")
        );
        // other-config only: the empty slot is not labelled.
        let only_foreign = [foreign.clone(), tape(None, None)];
        assert_eq!(
            choose_with(&only_foreign, Some(1), 3, Some("\"Daily-%%\" other-config")),
            auto(1, "Daily-01")
        );
        // any: the next slot after the current one, whatever it holds.
        for (current, slot) in [(None, 1), (Some(1), 2), (Some(2), 3)] {
            assert_eq!(
                choose_with(&tapes, current, 3, Some("\"Daily-%%\" any")),
                auto(slot, "Daily-01")
            );
        }
        // empty not given: nothing to do with an empty slot.
        let err = choose_with(
            &[tape(None, None), foreign],
            None,
            3,
            Some("\"Daily-%%\" non-amanda"),
        )
        .unwrap_err();
        assert!(err.contains("none is labelled and unwritten"), "{err}");
    }

    #[test]
    fn a_generated_label_must_match_labelstr_and_be_new() {
        let tapes = [tape(None, None), tape(None, None)];
        let err = choose_with(&tapes, None, 2, Some("Weekly-%%")).unwrap_err();
        assert!(
            err.contains("slot 1 would be labelled Weekly-01, which does not match labelstr"),
            "{err}"
        );
        // Without a run, a label a tape already has passes the slot over.
        let tapes = [
            tape(None, None),
            tape(Some("DailySet1-01"), Some("20260101000000")),
            tape(None, None),
        ];
        assert_eq!(
            choose_with(&tapes, None, 3, Some("$c-$2s")),
            auto(3, "DailySet1-03")
        );
        // ... and when no slot is left, says why.
        let err = choose_with(&tapes[..2], None, 3, Some("$c-$2s")).unwrap_err();
        assert!(
            err.contains("slot 1 would be labelled DailySet1-01, which a tape already has"),
            "{err}"
        );
    }

    #[test]
    fn used_up_labels_stop_load_next() {
        let mut tapes: Vec<SlotState> = (1..=9)
            .map(|n| tape(Some(&format!("Daily-{n}")), Some("20260101000000")))
            .collect();
        tapes.push(tape(None, None));
        let err = choose_with(&tapes, None, 20, Some("Daily-%")).unwrap_err();
        assert!(err.contains("All labels used"), "{err}");
        assert!(err.contains("Daily-1 to Daily-9"), "{err}");
    }
}
