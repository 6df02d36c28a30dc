//! `onair token`: mints an access token with the server's `--auth-secret`.

use std::process::ExitCode;
use std::time::SystemTime;

use onair_auth::{GrantArg, Grants, Minter, Scope};

use crate::cli::TokenArgs;

/// Prints a token for `args`, signed with `secret`; explains on stderr what is wrong otherwise.
pub fn print(args: &TokenArgs, secret: Option<&str>) -> ExitCode {
    let Some(secret) = secret else {
        eprintln!("onair token: needs the server's --auth-secret (or ONAIR_AUTH_SECRET) to sign with");
        return ExitCode::FAILURE;
    };
    let mut grants = args.grants.iter().cloned().fold(Grants::default(), Grants::with);
    if let Some(name) = &args.name {
        if grants.publish.is_none() {
            eprintln!("onair token: --name limits the publish grant; add --grant publish");
            return ExitCode::FAILURE;
        }
        grants = grants.with(GrantArg::Publish(Scope::Only(name.clone())));
    }
    let minted = Minter::hs256(secret).and_then(|m| {
        m.mint(&args.subject, grants, args.ttl, SystemTime::now())
            .map_err(|e| onair_auth::KeyError::Sign(e.to_string()))
    });
    match minted {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("onair token: {e}");
            ExitCode::FAILURE
        }
    }
}
