//! What the brokers' authorizer lets this handler do to a topic: may it write there?
//! Asked at start-up and by `check`, so that a topic the handler may not write to stops
//! it with one clear message instead of stalling the first batch that needs it.
//!
//! The question is Kafka's DescribeTopics with authorized operations (KIP-430), which
//! writes nothing. rust-rdkafka has no wrapper for it, so this module calls librdkafka's
//! admin API through `rdkafka::bindings`; the `unsafe` stays here, behind [`may_write`].

use std::ffi::{CStr, CString, c_char, c_int};
use std::time::Duration;

use rdkafka::bindings as rd;
use rdkafka::client::{Client, ClientContext};

/// Whether the brokers let this client write to `topic`: Some(false) when they do not,
/// None when they do not say (a broker older than Kafka 2.3). Err when the question
/// went unanswered (a missing topic, a timeout).
pub(crate) fn may_write<C: ClientContext>(
    client: &Client<C>,
    topic: &str,
    timeout: Duration,
) -> Result<Option<bool>, String> {
    let name = CString::new(topic).map_err(|_| format!("topic name {topic:?} has a NUL"))?;
    let timeout_ms = c_int::try_from(timeout.as_millis()).unwrap_or(c_int::MAX);
    // SAFETY: every pointer comes from librdkafka for the client's live handle, is used
    // while its owner (the guard below) lives, and is destroyed once, by the guard.
    unsafe {
        let rk = client.native_ptr();
        let request = Request {
            queue: rd::rd_kafka_queue_new(rk),
            options: rd::rd_kafka_AdminOptions_new(
                rk,
                rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_DESCRIBETOPICS,
            ),
            topics: rd::rd_kafka_TopicCollection_of_topic_names([name.as_ptr()].as_mut_ptr(), 1),
            event: std::ptr::null_mut(),
        };
        let mut errstr = [0 as c_char; 256];
        rd::rd_kafka_AdminOptions_set_request_timeout(
            request.options,
            timeout_ms,
            errstr.as_mut_ptr(),
            errstr.len(),
        );
        let error = rd::rd_kafka_AdminOptions_set_include_authorized_operations(request.options, 1);
        if !error.is_null() {
            let why = text(rd::rd_kafka_error_string(error));
            rd::rd_kafka_error_destroy(error);
            return Err(why);
        }
        rd::rd_kafka_DescribeTopics(rk, request.topics, request.options, request.queue);
        request.answer(timeout_ms, topic)
    }
}

/// One DescribeTopics request's librdkafka objects, destroyed on drop.
struct Request {
    queue: *mut rd::rd_kafka_queue_t,
    options: *mut rd::rd_kafka_AdminOptions_t,
    topics: *mut rd::rd_kafka_TopicCollection_t,
    event: *mut rd::rd_kafka_event_t,
}

impl Request {
    /// Waits for the answer and reads whether it grants WRITE (or ALL).
    unsafe fn answer(mut self, timeout_ms: c_int, topic: &str) -> Result<Option<bool>, String> {
        unsafe {
            // The request's own timeout ends it first; a little more for the reply.
            self.event = rd::rd_kafka_queue_poll(self.queue, timeout_ms.saturating_add(1000));
            if self.event.is_null() {
                return Err(format!("no answer about topic {topic}"));
            }
            if rd::rd_kafka_event_error(self.event)
                != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
            {
                return Err(text(rd::rd_kafka_event_error_string(self.event)));
            }
            let result = rd::rd_kafka_event_DescribeTopics_result(self.event);
            let mut count = 0;
            let described = rd::rd_kafka_DescribeTopics_result_topics(result, &mut count);
            if described.is_null() || count == 0 {
                return Err(format!("no description of topic {topic}"));
            }
            let description = *described;
            let error = rd::rd_kafka_TopicDescription_error(description);
            if !error.is_null() {
                match rd::rd_kafka_error_code(error) {
                    rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR => {}
                    // May not even see it: writing implies seeing, so no writing either.
                    rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED => {
                        return Ok(Some(false));
                    }
                    _ => return Err(text(rd::rd_kafka_error_string(error))),
                }
            }
            let mut operations = 0;
            let granted =
                rd::rd_kafka_TopicDescription_authorized_operations(description, &mut operations);
            if granted.is_null() {
                return Ok(None);
            }
            let granted = std::slice::from_raw_parts(granted, operations);
            Ok(Some(granted.iter().any(|operation| {
                matches!(
                    operation,
                    rd::rd_kafka_AclOperation_t::RD_KAFKA_ACL_OPERATION_WRITE
                        | rd::rd_kafka_AclOperation_t::RD_KAFKA_ACL_OPERATION_ALL
                )
            })))
        }
    }
}

impl Drop for Request {
    fn drop(&mut self) {
        // SAFETY: each was made by librdkafka for this request and is destroyed only here.
        unsafe {
            if !self.event.is_null() {
                rd::rd_kafka_event_destroy(self.event);
            }
            rd::rd_kafka_TopicCollection_destroy(self.topics);
            rd::rd_kafka_AdminOptions_destroy(self.options);
            rd::rd_kafka_queue_destroy(self.queue);
        }
    }
}

/// A C string from librdkafka, as text.
unsafe fn text(chars: *const c_char) -> String {
    if chars.is_null() {
        return "unknown error".to_string();
    }
    // SAFETY: librdkafka's strings are NUL-terminated and live as long as their owner.
    unsafe { CStr::from_ptr(chars) }
        .to_string_lossy()
        .into_owned()
}
