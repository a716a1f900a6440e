//! Time: the flow's `settings:` (timeouts, calendars, the default region),
//! idle nudges (`after:`) and `schedules:`.

use super::*;

impl Compiler<'_> {
    pub(super) fn after(
        &mut self,
        r: &mut Reporter<'_>,
        path: &str,
        a: &model::After,
    ) -> Option<AfterNode> {
        let idle_ms = match a.idle.as_deref() {
            None => {
                r.error(
                    path,
                    "`after` needs `idle`: how long the customer is silent first",
                    Some("add `idle: 10m`".into()),
                );
                None
            }
            Some(t) => match humantime::parse_duration(t) {
                Ok(d) if !d.is_zero() => Some(d.as_millis() as u64),
                Ok(_) => {
                    r.error(
                        &join_key(path, "idle"),
                        "`idle` must be longer than 0s",
                        None,
                    );
                    None
                }
                Err(e) => {
                    r.error(
                        &join_key(path, "idle"),
                        format!("`{t}` is not a duration: {e}"),
                        Some("write it like `10m`, `1h` or `90s`".into()),
                    );
                    None
                }
            },
        };
        let say = a
            .say
            .as_ref()
            .map(|x| self.say(r, &join_key(path, "say"), x))
            .unwrap_or_default();
        let goto = match &a.goto {
            Some(g) => Some(self.state_ref(r, &join_key(path, "goto"), g)?),
            None => None,
        };
        if a.say.is_none() && a.goto.is_none() {
            r.error(
                path,
                "`after` needs `say`, `goto`, or both",
                Some("add `say:` with a nudge, or `goto: STATE`".into()),
            );
            return None;
        }
        let template = a
            .template
            .as_ref()
            .and_then(|t| self.template_node(r, &join_key(path, "template"), t));
        Some(AfterNode {
            idle_ms: idle_ms?,
            say,
            goto,
            template,
        })
    }

    /// One entry of `schedules:`.
    pub(super) fn schedule(
        &mut self,
        r: &mut Reporter<'_>,
        path: &str,
        d: &model::ScheduleDoc,
    ) -> Option<crate::flow::schedule::Schedule> {
        use crate::flow::schedule::{Kind, Schedule};
        let p = |k: &str| join_key(path, k);
        if d.name.trim().is_empty() {
            r.error(&p("name"), "a schedule needs a `name`", None);
            return None;
        }
        let state = self.state_ref(r, &p("state"), &d.state);
        let zone = match d.timezone.as_deref() {
            None => Some(jiff::tz::TimeZone::UTC),
            Some(z) => match jiff::tz::TimeZone::get(z) {
                Ok(z) => Some(z),
                Err(_) => {
                    r.error(
                        &p("timezone"),
                        format!("`{z}` is not a time zone"),
                        Some("write an IANA zone, like `Europe/Istanbul`".into()),
                    );
                    None
                }
            },
        };
        let mode = match d.mode.as_deref() {
            None => Some(crate::message::StartMode::Skip),
            Some(m) => match m.parse() {
                Ok(m) => Some(m),
                Err(e) => {
                    r.error(&p("mode"), e, None);
                    None
                }
            },
        };
        let when = match &d.when {
            None => None,
            Some(w) => match self.templates.expression(w) {
                Ok(t) => Some(t),
                Err(e) => {
                    r.error(&p("when"), format!("invalid expression: {e}"), None);
                    return None;
                }
            },
        };
        let kind = match (&d.cron, &d.from) {
            (Some(expr), None) => {
                if d.after.is_some() || d.at.is_some() {
                    r.error(
                        path,
                        "`after` and `at` go with `from`, not with `cron`",
                        None,
                    );
                }
                match crate::flow::schedule::cron(expr) {
                    Ok(cron) => {
                        if let Some(warning) = crate::flow::schedule::outgrows_budget(&cron) {
                            r.warning(
                                &p("cron"),
                                warning,
                                Some("fire less often, or narrow it with `when:`".into()),
                            );
                        }
                        zone.clone().map(|zone| Kind::Cron {
                            cron: Box::new(cron),
                            zone,
                        })
                    }
                    Err(e) => {
                        r.error(
                            &p("cron"),
                            format!("`{expr}` is not a cron expression: {e}"),
                            Some(
                                "write minute, hour, day, month and weekday, like `0 10 * * MON`"
                                    .into(),
                            ),
                        );
                        None
                    }
                }
            }
            (None, Some(var)) => {
                let after_ms = match d.after.as_deref().map(humantime::parse_duration) {
                    None => Some(0),
                    Some(Ok(d)) => Some(d.as_millis() as i64),
                    Some(Err(e)) => {
                        r.error(
                            &p("after"),
                            format!("not a duration: {e}"),
                            Some("write it like `2d` or `36h`".into()),
                        );
                        None
                    }
                };
                let at = match d.at.as_deref() {
                    None => Some(None),
                    Some(t) => match t.parse::<jiff::civil::Time>() {
                        Ok(t) => Some(Some(t)),
                        Err(_) => {
                            r.error(
                                &p("at"),
                                format!("`{t}` is not a time of day"),
                                Some("write it like `10:00`".into()),
                            );
                            None
                        }
                    },
                };
                match (after_ms, at, zone.clone()) {
                    (Some(after_ms), Some(at), Some(zone)) => Some(Kind::Offset {
                        var: var.as_str().into(),
                        after_ms,
                        at,
                        zone,
                    }),
                    _ => None,
                }
            }
            _ => {
                r.error(
                    path,
                    "a schedule has either `cron` or `from` (a variable holding a date)",
                    Some(
                        "`cron: \"0 10 * * MON\"`, or `from: delivery_date` with `after: 2d`"
                            .into(),
                    ),
                );
                None
            }
        };
        Some(Schedule {
            name: d.name.as_str().into(),
            state: state?,
            when,
            mode: mode?,
            kind: kind?,
        })
    }

    pub(super) fn settings(&mut self, r: &mut Reporter<'_>, s: &model::Settings) -> FlowSettings {
        let duration = |r: &mut Reporter<'_>, key: &str, t: &Option<String>| {
            t.as_ref().and_then(|t| match humantime::parse_duration(t) {
                Ok(d) => Some(d.as_millis() as u64),
                Err(e) => {
                    r.error(
                        key,
                        format!("`{t}` is not a duration: {e}"),
                        Some("write it like `30m`, `2h` or `1h 30m`".into()),
                    );
                    None
                }
            })
        };
        let session_timeout_ms = duration(r, "settings.session_timeout", &s.session_timeout);
        let handoff_timeout_ms = duration(r, "settings.handoff_timeout", &s.handoff_timeout);
        let overflow_adapt = match s.overflow.as_deref() {
            None | Some("error") => false,
            Some("adapt") => true,
            Some(other) => {
                r.error(
                    "settings.overflow",
                    format!("unknown overflow mode `{other}`"),
                    Some("use `error` (the default) or `adapt`".into()),
                );
                false
            }
        };
        self.adapt = overflow_adapt;
        self.region = s.default_region.as_deref().and_then(|code| {
            match code
                .to_ascii_uppercase()
                .parse::<phonenumber::country::Id>()
            {
                Ok(id) => Some(id),
                Err(_) => {
                    r.error(
                        "settings.default_region",
                        format!("`{code}` is not a region"),
                        Some("write a two-letter country code, like `TR`, `DE` or `US`".into()),
                    );
                    None
                }
            }
        });
        FlowSettings {
            session_timeout_ms,
            retries: s.retries.unwrap_or(1),
            numbered_fallback: s.numbered_fallback.unwrap_or(true),
            fallback: s
                .fallback
                .as_ref()
                .map(|f| self.fallback(r, "settings.fallback", f)),
            default_language: s.default_language.as_deref().map(Into::into),
            overflow_adapt,
            error_message: s
                .error_message
                .as_ref()
                .and_then(|t| self.ltext(r, "settings.error_message", t)),
            restart_message: s
                .restart_message
                .as_ref()
                .and_then(|t| self.ltext(r, "settings.restart_message", t)),
            release_message: s
                .release_message
                .as_ref()
                .and_then(|t| self.ltext(r, "settings.release_message", t)),
            handoff_failed_message: s
                .handoff_failed_message
                .as_ref()
                .and_then(|t| self.ltext(r, "settings.handoff_failed_message", t)),
            handoff_timeout_ms,
            overflow_button: s.overflow_button.as_ref().and_then(|t| {
                validate::check_len(
                    r,
                    "settings.overflow_button",
                    t,
                    validate::limits::LIST_BUTTON,
                    "the list button",
                );
                self.ltext(r, "settings.overflow_button", t)
            }),
            http_allow: Arc::default(),
            http_per_turn: 0,
        }
    }
}
