//! The SMTP command grammar mxguard parses itself rather than through smtp-proto:
//! mailbox addresses and the MAIL/RCPT commands with typed parameters, so an address
//! reaches the rules and the upstream exactly as the client meant it.

pub mod address;
pub mod command;

pub use address::{Address, AddressError, Domain, ForwardPath, ReversePath, strip_angle_brackets};
pub use command::{
    Body, CommandError, MailCommand, MailParams, Notify, Orcpt, RcptCommand, RcptParams, Ret,
    parse_mail, parse_rcpt,
};
