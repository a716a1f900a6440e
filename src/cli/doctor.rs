//! `flowbot doctor`: checks a live Qpien account against what flowbot assumes
//! (see `qpien::doctor`), with the configuration `flowbot run` would use.
//! Exit 0 when the bot can run, 1 otherwise, 2 for a configuration error.

use std::path::Path;

use crate::config::Config;
use crate::qpien::doctor;

pub(super) async fn run(
    config_path: Option<&Path>,
    write_documents: Option<&Path>,
    templates: Option<&Path>,
) -> u8 {
    let config = match Config::load(config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    println!("flowbot doctor: {}", config.qpien.endpoint);
    let report = doctor::run(&config.qpien).await;
    print!("{}", report.render());
    if let Some(dir) = write_documents {
        let dialect = report.dialect.unwrap_or(config.qpien.dialect);
        match doctor::write_documents(dir, dialect) {
            Ok(files) => println!(
                "\nWrote {} documents ({} dialect) to {}: edit them, then set qpien.documents_dir",
                files.len(),
                dialect.as_str(),
                dir.display()
            ),
            Err(e) => {
                eprintln!(
                    "error: cannot write the documents to {}: {e}",
                    dir.display()
                );
                return 2;
            }
        }
    }
    if let Some(path) = templates {
        let Some(list) = &report.templates else {
            eprintln!(
                "error: the templates could not be read, so {} was not written",
                path.display()
            );
            return 1;
        };
        let json = serde_json::to_string_pretty(list).unwrap_or_default();
        if let Err(e) = std::fs::write(path, json + "\n") {
            eprintln!("error: cannot write {}: {e}", path.display());
            return 2;
        }
        println!(
            "\nWrote {} approved template(s) to {}: `flowbot validate --templates {}` checks flows against them",
            list.len(),
            path.display(),
            path.display()
        );
    }
    if report.ok() {
        0
    } else {
        1
    }
}
