// Prints, for each schema given as a file argument, the Parsing Canonical Form and the
// CRC-64-AVRO fingerprint that Apache Avro's Java reference implementation computes
// (org.apache.avro.SchemaNormalization). Used by scripts/avro_fingerprints.py.
import java.io.File;
import org.apache.avro.Schema;
import org.apache.avro.SchemaNormalization;

public class Fingerprints {
    public static void main(String[] args) throws Exception {
        for (String path : args) {
            try {
                Schema s = new Schema.Parser().parse(new File(path));
                String pcf = SchemaNormalization.toParsingForm(s);
                long fp = SchemaNormalization.parsingFingerprint64(s);
                System.out.println(path + "\t" + Long.toUnsignedString(fp, 16) + "\t" + pcf);
            } catch (Exception e) {
                System.out.println(path + "\tERROR\t" + e.toString().replace('\n', ' '));
            }
        }
    }
}
