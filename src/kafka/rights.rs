//! What the brokers' authorizer lets this handler do to its topics: may it write there?
//! Asked at start-up and by `check`, so that a topic the handler may not write to stops
//! it with one clear message instead of stalling the first batch that needs it.
//!
//! The question is Kafka's DescribeTopics with authorized operations (KIP-430), which
//! writes nothing, asked once for all the topics. rust-rdkafka has no wrapper for it, so
//! this module calls librdkafka's admin API through `rdkafka::bindings`, one call per
//! `unsafe` block, with every object held by an [`Owned`] guard.
#![warn(clippy::undocumented_unsafe_blocks)]

use std::ffi::{CString, c_char, c_int};
use std::time::Duration;

use rdkafka::bindings as rd;
use rdkafka::client::{Client, ClientContext};

use crate::kafka::native::{Owned, buffer_text, text};

use rd::rd_kafka_AclOperation_t::{RD_KAFKA_ACL_OPERATION_ALL, RD_KAFKA_ACL_OPERATION_WRITE};
use rd::rd_kafka_resp_err_t::{
    RD_KAFKA_RESP_ERR_NO_ERROR as NO_ERROR,
    RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED as AUTHORIZATION_FAILED,
};

/// What the brokers say about this client writing to one topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum WriteRight {
    Granted,
    Denied,
    /// They do not say (a topic not there yet, a broker older than Kafka 2.3): why.
    Unknown(String),
}

/// Whether the brokers let this client write to each of `topics`, in their order, from
/// one request. Err when the request went unanswered (brokers unreachable, a timeout).
pub(crate) fn write_rights<C: ClientContext>(
    client: &Client<C>,
    topics: &[&str],
    timeout: Duration,
) -> Result<Vec<(String, WriteRight)>, String> {
    let mut unique = topics.to_vec();
    unique.sort_unstable();
    // librdkafka refuses a request naming a topic twice.
    unique.dedup();
    let names = unique
        .iter()
        .map(|topic| CString::new(*topic).map_err(|_| format!("topic name {topic:?} has a NUL")))
        .collect::<Result<Vec<_>, _>>()?;
    let mut name_ptrs: Vec<*const c_char> = names.iter().map(|name| name.as_ptr()).collect();
    let timeout_ms = c_int::try_from(timeout.as_millis()).unwrap_or(c_int::MAX);
    let rk = client.native_ptr();

    // SAFETY: a queue of the live client, owned by the guard.
    let queue = unsafe { Owned::new(rd::rd_kafka_queue_new(rk), rd::rd_kafka_queue_destroy) }
        .ok_or("librdkafka made no queue")?;
    let op = rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_DESCRIBETOPICS;
    // SAFETY: options for the live client, owned by the guard.
    let options = unsafe {
        Owned::new(
            rd::rd_kafka_AdminOptions_new(rk, op),
            rd::rd_kafka_AdminOptions_destroy,
        )
    }
    .ok_or("librdkafka made no admin options")?;
    configure(&options, timeout_ms)?;
    // SAFETY: `name_ptrs` points to `names`' NUL-terminated strings, alive for the call
    // (librdkafka copies them); the collection is the guard's.
    let collection = unsafe {
        Owned::new(
            rd::rd_kafka_TopicCollection_of_topic_names(name_ptrs.as_mut_ptr(), name_ptrs.len()),
            rd::rd_kafka_TopicCollection_destroy,
        )
    }
    .ok_or("librdkafka made no topic collection")?;
    // SAFETY: all live; librdkafka copies the collection and options and keeps its own
    // reference to the queue, so the guards may go before the answer comes.
    unsafe {
        rd::rd_kafka_DescribeTopics(rk, collection.as_ptr(), options.as_ptr(), queue.as_ptr())
    };
    // The request's own timeout ends it first; a little more for the answer to arrive.
    let wait_ms = timeout_ms.saturating_add(1000);
    // SAFETY: a live queue; the event is the guard's.
    let event = unsafe {
        Owned::new(
            rd::rd_kafka_queue_poll(queue.as_ptr(), wait_ms),
            rd::rd_kafka_event_destroy,
        )
    }
    .ok_or_else(|| format!("no answer within {timeout:?}"))?;
    let described = descriptions(&event)?;
    Ok(topics
        .iter()
        .map(|topic| {
            let right = described
                .iter()
                .find(|(name, _)| name == topic)
                .map(|(_, right)| right.clone())
                .unwrap_or_else(|| WriteRight::Unknown("the brokers did not describe it".into()));
            (topic.to_string(), right)
        })
        .collect())
}

/// The request's timeout, and the question for authorized operations.
fn configure(
    options: &Owned<rd::rd_kafka_AdminOptions_t>,
    timeout_ms: c_int,
) -> Result<(), String> {
    let mut errstr = [0u8; 256];
    // SAFETY: live options; librdkafka writes at most `errstr.len()` bytes into errstr.
    let code = unsafe {
        rd::rd_kafka_AdminOptions_set_request_timeout(
            options.as_ptr(),
            timeout_ms,
            errstr.as_mut_ptr().cast(),
            errstr.len(),
        )
    };
    if code != NO_ERROR {
        return Err(format!(
            "cannot set the request timeout: {}",
            buffer_text(&errstr)
        ));
    }
    // SAFETY: live options; the error returned, if any, is the guard's.
    let error = unsafe {
        Owned::new(
            rd::rd_kafka_AdminOptions_set_include_authorized_operations(options.as_ptr(), 1),
            rd::rd_kafka_error_destroy,
        )
    };
    let Some(error) = error else { return Ok(()) };
    // SAFETY: a live error; its string lives with it.
    let why = unsafe { text(rd::rd_kafka_error_string(error.as_ptr())) };
    Err(format!("cannot ask for authorized operations: {why}"))
}

/// The topics the answer describes, with what they grant.
fn descriptions(event: &Owned<rd::rd_kafka_event_t>) -> Result<Vec<(String, WriteRight)>, String> {
    // SAFETY: a live event.
    if unsafe { rd::rd_kafka_event_error(event.as_ptr()) } != NO_ERROR {
        // SAFETY: a live event; its string lives with it.
        return Err(unsafe { text(rd::rd_kafka_event_error_string(event.as_ptr())) });
    }
    // SAFETY: a live event; NULL when it is no DescribeTopics result.
    let result = unsafe { rd::rd_kafka_event_DescribeTopics_result(event.as_ptr()) };
    if result.is_null() {
        return Err("the answer is no DescribeTopics result".into());
    }
    let mut count = 0;
    // SAFETY: a non-NULL result of the live event; the array lives with the event.
    let described = unsafe { rd::rd_kafka_DescribeTopics_result_topics(result, &mut count) };
    if described.is_null() || count == 0 {
        return Ok(Vec::new());
    }
    // SAFETY: librdkafka's array of `count` descriptions, alive with the event.
    let described = unsafe { std::slice::from_raw_parts(described, count) };
    // SAFETY: each is NULL or a description of the live event.
    Ok(described
        .iter()
        .filter_map(|&d| unsafe { description(d) })
        .collect())
}

/// One topic's name and what it grants; None for a NULL description or name.
///
/// # Safety
/// `description` is NULL or a topic description of an event alive for the call.
unsafe fn description(
    description: *const rd::rd_kafka_TopicDescription_t,
) -> Option<(String, WriteRight)> {
    if description.is_null() {
        return None;
    }
    // SAFETY: the caller's contract; the name lives with the description.
    let name = unsafe { rd::rd_kafka_TopicDescription_name(description) };
    if name.is_null() {
        return None;
    }
    // SAFETY: a NUL-terminated name of the live description.
    let name = unsafe { std::ffi::CStr::from_ptr(name) }
        .to_string_lossy()
        .into_owned();
    // SAFETY: the live description; the error, if any, is the description's own.
    let error = unsafe { rd::rd_kafka_TopicDescription_error(description) };
    let error = (!error.is_null())
        // SAFETY: a live error of the description.
        .then(|| unsafe { rd::rd_kafka_error_code(error) })
        .filter(|code| *code != NO_ERROR)
        // SAFETY: as above; its string lives with it.
        .map(|code| (code, unsafe { text(rd::rd_kafka_error_string(error)) }));
    let mut count = 0;
    // SAFETY: the live description; NULL when the brokers did not say.
    let granted =
        unsafe { rd::rd_kafka_TopicDescription_authorized_operations(description, &mut count) };
    let granted: Option<&[u32]> = match (granted.is_null(), count) {
        (true, _) => None,
        (false, 0) => Some(&[]),
        // SAFETY: `count` operations alive with the description. Read as the u32 they
        // are (`repr(u32)`), so that a value the bindings do not name is no bad enum.
        (false, _) => Some(unsafe { std::slice::from_raw_parts(granted.cast::<u32>(), count) }),
    };
    Some((name, write_right(error, granted)))
}

/// The decision, from a topic's error (None: none) and the operations the brokers grant
/// on it (None: they do not say). WRITE or ALL grants writing; not even seeing the
/// topic (writing implies it) refuses it.
fn write_right(
    error: Option<(rd::rd_kafka_resp_err_t, String)>,
    granted: Option<&[u32]>,
) -> WriteRight {
    match (error, granted) {
        (Some((AUTHORIZATION_FAILED, _)), _) => WriteRight::Denied,
        (Some((_, why)), _) => WriteRight::Unknown(why),
        (None, None) => WriteRight::Unknown("the brokers do not say (older than Kafka 2.3)".into()),
        (None, Some(granted)) => {
            let writes = [
                RD_KAFKA_ACL_OPERATION_WRITE as u32,
                RD_KAFKA_ACL_OPERATION_ALL as u32,
            ];
            if granted.iter().any(|operation| writes.contains(operation)) {
                WriteRight::Granted
            } else {
                WriteRight::Denied
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rd::rd_kafka_AclOperation_t::*;
    use rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART;

    fn granting(operations: &[rd::rd_kafka_AclOperation_t]) -> WriteRight {
        let operations: Vec<u32> = operations.iter().map(|o| *o as u32).collect();
        write_right(None, Some(&operations))
    }

    #[test]
    fn write_or_all_grants_writing_and_anything_else_refuses_it() {
        assert_eq!(
            granting(&[RD_KAFKA_ACL_OPERATION_READ, RD_KAFKA_ACL_OPERATION_WRITE]),
            WriteRight::Granted
        );
        assert_eq!(granting(&[RD_KAFKA_ACL_OPERATION_ALL]), WriteRight::Granted);
        assert_eq!(
            granting(&[RD_KAFKA_ACL_OPERATION_READ, RD_KAFKA_ACL_OPERATION_DESCRIBE]),
            WriteRight::Denied
        );
        assert_eq!(granting(&[]), WriteRight::Denied);
        // A value the bindings do not name is no right to write.
        assert_eq!(write_right(None, Some(&[99])), WriteRight::Denied);
    }

    #[test]
    fn a_topic_it_may_not_see_is_refused_and_one_not_there_is_unknown() {
        let error = |code| Some((code, "why".to_string()));
        assert_eq!(
            write_right(error(AUTHORIZATION_FAILED), None),
            WriteRight::Denied
        );
        assert_eq!(
            write_right(error(RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART), None),
            WriteRight::Unknown("why".into())
        );
        assert!(matches!(write_right(None, None), WriteRight::Unknown(_)));
    }
}
