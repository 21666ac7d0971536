// Dev/test only: takes a right on one topic away from one principal, or gives it back,
// on the local stack's broker, which runs Kafka's StandardAuthorizer and allows what no
// ACL names. Once an ACL names the topic, only what is allowed there is: so the right is
// taken away by two ACLs, ALLOW ALL and DENY the operation, and given back by removing
// both.
// Run by `dev/stack kafka-acl` with the broker's own jars (rust-rdkafka has no ACL
// API):  java -cp 'LIBS/*' TopicAcl.java BOOTSTRAP deny|undeny TOPIC PRINCIPAL OPERATION
import java.util.List;
import java.util.Properties;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.common.acl.AccessControlEntry;
import org.apache.kafka.common.acl.AclBinding;
import org.apache.kafka.common.acl.AclOperation;
import org.apache.kafka.common.acl.AclPermissionType;
import org.apache.kafka.common.resource.PatternType;
import org.apache.kafka.common.resource.ResourcePattern;
import org.apache.kafka.common.resource.ResourceType;

public class TopicAcl {
    public static void main(String[] args) throws Exception {
        if (args.length != 5 || !(args[1].equals("deny") || args[1].equals("undeny"))) {
            System.err.println("usage: TopicAcl BOOTSTRAP deny|undeny TOPIC PRINCIPAL OPERATION");
            System.exit(2);
        }
        Properties properties = new Properties();
        properties.put("bootstrap.servers", args[0]);
        ResourcePattern topic = new ResourcePattern(ResourceType.TOPIC, args[2], PatternType.LITERAL);
        List<AclBinding> bindings = List.of(
            new AclBinding(topic, new AccessControlEntry(args[3], "*", AclOperation.ALL, AclPermissionType.ALLOW)),
            new AclBinding(topic, new AccessControlEntry(
                args[3], "*", AclOperation.fromString(args[4]), AclPermissionType.DENY)));
        try (Admin admin = Admin.create(properties)) {
            if (args[1].equals("deny")) {
                admin.createAcls(bindings).all().get();
            } else {
                admin.deleteAcls(bindings.stream().map(AclBinding::toFilter).toList()).all().get();
            }
        }
    }
}
